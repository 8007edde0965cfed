"""``cactus rule meta-train``: meta-learn an unsupervised update rule (Metz et al., ICLR 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from cactus.cli.options import stage_options
from cactus.core.errors import CactusError
from cactus.stages.configs import checkpoint_every_option


@dataclass(frozen=True)
class RuleCheckpoints:
    """``--checkpoint-every``, declared once for ``embed``, ``meta`` and ``rule meta-train`` (seconds)."""

    checkpoint_every: float = checkpoint_every_option()


def _pair(value: str, option: str) -> tuple[int, int]:
    """'64,128' -> (64, 128); '96' -> (96, 96)."""
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise CactusError(f"{option} {value!r}: expected LOW,HIGH integers") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise CactusError(f"{option} {value!r}: expected LOW,HIGH integers")
    return parts[0], parts[1]


@click.group()
def rule() -> None:
    """Meta-learn the neuron-local unsupervised update rule used by ``embed --method learned-rule``."""


@rule.command("meta-train")
@click.option("--data", required=True, help="Labelled source: omniglot:PATH | digits | idx:PATH | ...; "
              "only its meta-train split is used.")
@click.option("--image-size", type=int, default=14, show_default=True,
              help="Resize images to this size for meta-training (0 keeps the native size).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("rule.h5"), show_default=True)
@click.option("--width-range", default="64,128", show_default=True, help="Base-MLP widths LOW,HIGH.")
@click.option("--depth-range", default="2,3", show_default=True, help="Base-MLP depths LOW,HIGH.")
@click.option("--unroll", type=int, default=200, show_default=True,
              help="Unsupervised steps of an inner run at the end of the curriculum.")
@click.option("--unroll-min", type=int, default=20, show_default=True, help="Inner-run length at the start.")
@click.option("--truncation", "--window", "window", type=int, default=10, show_default=True,
              help="Steps unrolled (backpropagated through) per meta-update.")
@click.option("--outer-steps", type=int, default=2000, show_default=True, help="Meta-updates of theta.")
@click.option("--meta-lr", type=float, default=1e-3, show_default=True)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Meta-gradient norm clip.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Unsupervised minibatch.")
@click.option("--pool-classes", type=int, default=100, show_default=True,
              help="Classes whose unlabelled images one inner run trains on.")
@click.option("--ways", type=int, default=10, show_default=True, help="Ways of the meta-objective's tasks.")
@click.option("--shots", type=int, default=5, show_default=True)
@click.option("--queries", type=int, default=5, show_default=True)
@click.option("--hidden", type=int, default=16, show_default=True, help="Channels of the update network.")
@click.option("--blocks", type=int, default=2, show_default=True, help="Layers of the update network.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Checkpoint file [OUT.ckpt]; removed once the rule is written.")
@stage_options(RuleCheckpoints)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint (same options; --outer-steps may change).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def meta_train(data, image_size, out, width_range, depth_range, unroll, unroll_min, window, outer_steps, meta_lr,
               clip, batch_size, pool_classes, ways, shots, queries, hidden, blocks, seed, threads, checkpoint,
               checkpoint_every, resume, as_json):
    """Meta-train theta by truncated backpropagation through unrolled unsupervised training."""
    import json

    import numpy as np

    from cactus.core import log
    from cactus.core.device import resolve_device
    from cactus.datasets.dataset import TRAIN, load_dataset
    from cactus.update_rule.config import RuleConfig
    from cactus.update_rule.train import meta_train as run_meta_train

    resolve_device("cpu", threads)
    config = RuleConfig(width_range=_pair(width_range, "--width-range"),
                        depth_range=_pair(depth_range, "--depth-range"),
                        unroll=unroll, unroll_min=unroll_min, window=window, outer_steps=outer_steps, meta_lr=meta_lr,
                        clip=clip, seed=seed, batch_size=batch_size, pool_classes=pool_classes, ways=ways,
                        shots=shots, queries=queries, hidden=hidden, blocks=blocks)
    ds = load_dataset(data, image_size=image_size or None)
    rows = ds.indices(TRAIN)
    if len(rows) == 0:
        raise CactusError(f"--data {data}: the meta-train split is empty")
    pixels = ds.images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0
    labels = ds.true_labels()[rows]  # meta-training a rule on a labelled source is supervised by design
    import sys

    attrs = {"dataset": ds.describe(), "image_shape": list(ds.image_shape), "command": " ".join(sys.argv)}
    summary = run_meta_train(config, pixels, labels, out, [ds.fingerprint()], attrs, checkpoint, checkpoint_every,
                             resume)  # SIGTERM / SIGINT: cactus.core.training.Stopped, exit 143 / 130
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        log.info(f"rule written to {out}: meta-objective {summary['meta_objective_first']:.4f} -> "
                 f"{summary['meta_objective_last']:.4f} over {outer_steps} outer steps in {summary['seconds']} s")
