"""``cactus embed``: fit an unsupervised encoder and embed every image."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import data_options, data_ref, device_options, force_option, json_option, with_options
from cactus.cli.output import emit

ENCODER_OPTIONS = ("dim", "epochs", "batch_size", "lr", "seed", "device", "threads", "width", "depth", "steps", "rule",
                   "quick", "path")


@click.command()
@data_options
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Embedding artifact to write.")
@click.option("--method", default="pca", show_default=True, help="Encoder: pca, acai, bigan, deepcluster, ...")
@click.option("--encoder", "encoder_file", type=click.Path(path_type=Path), default=None,
              help="Reuse the encoder stored in this embed artifact instead of training one.")
@click.option("--dim", type=int, default=None, help="Embedding dimension.")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--width", type=int, default=None, help="learned-rule: base MLP width.")
@click.option("--depth", type=int, default=None, help="learned-rule: base MLP depth.")
@click.option("--steps", type=int, default=None, help="learned-rule: unsupervised steps.")
@click.option("--rule", type=str, default=None, help="learned-rule: rule artifact (default: the shipped one).")
@click.option("--quick", is_flag=True, default=None, help="The encoder's quick setting (minutes on a CPU).")
@click.option("--path", type=str, default=None,
              help="load: embeddings you already have (.npy/.npz/.h5, one row per image) or a TorchScript encoder.")
@with_options(device_options)
@click.option("--resume", is_flag=True, help="Continue training from the checkpoint beside --out.")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True,
              help="Seconds between checkpoints of a neural encoder's training.")
@force_option
@json_option
def embed(data, image_size, split, split_seed, out, method, encoder_file, resume, checkpoint_every, force, as_json,
          **options):
    """Fit an unsupervised encoder on the meta-train images and embed every image.

    The neural encoders checkpoint beside --out (OUT.ckpt) and on SIGTERM/SIGINT; --resume
    continues to the same result. Under `torchrun --nproc-per-node N` contrastive and acai split
    each mini-batch over the N processes (--batch-size a multiple of N); the others refuse.
    """
    from cactus.core import distributed
    from cactus.stages.embed import run_embed

    given = {k: v for k, v in options.items() if k in ENCODER_OPTIONS and v is not None}
    if not given.get("device") or given.get("device") == "auto":
        given.pop("device", None)
    try:
        result = run_embed(out, data_ref(data, image_size, split, split_seed), method, given, encoder_file, force,
                           resume, checkpoint_every)
    finally:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
