"""``cactus embed``: fit an unsupervised encoder and embed every image."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import force_option, json_option, stage_options
from cactus.cli.output import emit
from cactus.stages.configs import EmbedConfig


@click.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Embedding artifact to write.")
@click.option("--encoder", "encoder_file", type=click.Path(path_type=Path), default=None,
              help="Reuse the encoder stored in this embed artifact instead of training one.")
@stage_options(EmbedConfig)
@force_option
@json_option
def embed(out, encoder_file, force, as_json, **values):
    """Fit an unsupervised encoder on the meta-train images and embed every image.

    The neural encoders checkpoint beside --out (OUT.ckpt) and on SIGTERM/SIGINT; --resume
    continues to the same result. Under `torchrun --nproc-per-node N` contrastive and acai split
    each mini-batch over the N processes (--batch-size a multiple of N); the others refuse.
    """
    from cactus.core import distributed
    from cactus.stages.embed import embed_stage
    from cactus.stages.options import build

    config = build(EmbedConfig, values)
    try:
        result = embed_stage(out, config, encoder_file, force)
    except BaseException:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
        raise
    distributed.teardown(wait=True)
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
