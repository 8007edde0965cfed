"""``cactus embed``: fit an unsupervised encoder on the meta-train images and embed every image."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import RowStream, read_artifact, write_artifact
from cactus.core.training import CheckpointPolicy, checkpoint_path
from cactus.stages.common import DataRef, StageResult, torch_threads, up_to_date
from cactus.stages.configs import EmbedConfig
from embeddings.fit_state import fit_session

STAGE = "embed"


def run_embed(
    out: Path,
    data: DataRef,
    method: str = "pca",
    options: dict[str, Any] | None = None,
    encoder_file: Path | None = None,
    force: bool = False,
    resume: bool = False,
    checkpoint_every_s: float = 300.0,
) -> StageResult:
    """Embed all images of ``data``; the encoder learns from the meta-train split only.

    Writes /embeddings (N, D) float32, /split (N,) int8 and /encoder/* (the encoder's weights).
    With ``encoder_file`` (an embed artifact) the stored encoder is reused instead of trained.
    The neural encoders checkpoint to ``OUT.ckpt`` every ``checkpoint_every_s`` seconds and on
    SIGTERM / SIGINT; ``resume`` continues from that checkpoint. Under torchrun the ranks split
    each mini-batch (encoders that can do so exactly) and rank 0 alone writes.
    """
    from embeddings import encoder_class

    started = time.monotonic()
    dataset = data.load()
    inputs = [dataset.fingerprint()]
    if encoder_file is not None:
        source = read_artifact(encoder_file, stage=STAGE)
        params = dict(source.config["encoder"])
        inputs.append(source.key)
        config = {"data": data.as_dict(), "encoder": params, "encoder_from": source.key}
    else:
        params = {}
        config = {"data": data.as_dict(), "encoder": None}
    cls = encoder_class(params.get("method", method))
    kwargs = dict(params or options or {})
    if encoder_file is not None:  # where and how fast it runs is the caller's (not part of the stored config)
        kwargs.update({k: v for k, v in (options or {}).items() if k in cls.NOT_IN_KEY})
    encoder = cls.from_params(kwargs, stored=encoder_file)
    config["encoder"] = encoder.key_params()
    inputs.extend(encoder.input_keys())  # learned-rule: the rule artifact's key
    reads_rows = hasattr(encoder, "transform_rows")  # `load`: embeddings or a script from a file
    if reads_rows:
        inputs.append(file_digest(Path(encoder.path)))
    world = _join_world(encoder, encoder_file is not None)
    key, skipped = up_to_date(STAGE, out, config, inputs, force, lock=world.is_main)
    if world.distributed:
        from cactus.core import distributed

        skipped = distributed.broadcast_flag(skipped)  # rank 0 decides (it holds the lock)
    if skipped:
        return StageResult(STAGE, out, key, True)
    train_images = dataset.images[dataset.indices(0)]
    if len(train_images) == 0:
        raise CactusError(f"--data {dataset.spec}: its split ({dataset.split_rule}) leaves no meta-train images "
                          "(a folder needs several classes, or --split images)")
    if encoder_file is not None:
        encoder.set_state(source.group("encoder"))
        fit_seconds = 0.0
    else:
        log.info(f"embed: fitting {encoder.name} on {len(train_images)} unlabelled meta-train images")
        fit_start = time.monotonic()
        if reads_rows:
            encoder.transform_rows(dataset.indices(0), dataset_size=len(dataset))
        session = CheckpointPolicy(checkpoint_path(out), key, resume, checkpoint_every_s, world)
        with fit_session(session):
            encoder.fit(train_images)
        fit_seconds = time.monotonic() - fit_start
    if not world.is_main:  # rank 0 embeds and writes the artifact
        return StageResult(STAGE, out, key, False, time.monotonic() - started, {"rank": world.rank})
    embeddings = embedding_rows(encoder, dataset.images)  # written block by block, never whole in memory
    arrays = {"embeddings": embeddings, "split": dataset.split}
    arrays.update({f"encoder/{name}": value for name, value in encoder.get_state().items()})
    history = getattr(encoder, "history_", None) or (
        {"loss": [float(x) for x in encoder.losses_]} if getattr(encoder, "losses_", None) is not None else None)
    attrs = {"data": data.as_dict(), "data_fingerprint": dataset.fingerprint(),
             "dataset": dataset.describe(), "fit_seconds": fit_seconds, "torch_threads": torch_threads()}
    if history:
        attrs["history"] = history
    key = write_artifact(out, STAGE, config, inputs, arrays, attrs)
    checkpoint_path(out).unlink(missing_ok=True)
    summary = {"method": encoder.name, "dim": int(embeddings.shape[1]), "images": int(embeddings.shape[0]),
               "fit_seconds": round(fit_seconds, 2)}
    return StageResult(STAGE, out, key, False, time.monotonic() - started, summary)


def _join_world(encoder, reuses_encoder: bool):
    """One process: World(). Under torchrun / srun: join the process group, if the encoder can split batches.

    An encoder whose multi-process fit could differ from a one-process fit is refused in one line.
    """
    from cactus.core import distributed

    world = distributed.world_from_env()
    if not world.distributed:
        return world
    reason = "it reuses a trained encoder (nothing to train)" if reuses_encoder else encoder.not_data_parallel
    if reason is not None:
        raise CactusError(f"--method {encoder.name}: cannot train on {world.size} processes exactly as on one, since "
                          f"{reason}; run it as a single process (without torchrun / srun)")
    from cactus.core.device import resolve_device

    world, _ = distributed.setup(resolve_device(getattr(encoder, "device", "auto")))
    if not world.is_main:
        log.set_verbosity(0)
    return world


def embedding_rows(encoder, images: np.ndarray, chunk: int = 4096) -> RowStream:
    """Every dataset image (N, H, W, C) transformed in chunks of ``chunk``: an (N, D) float32 :class:`RowStream`.

    The first chunk is embedded now (it gives D); the rest as the artifact is written, so peak memory
    is one chunk's embeddings, not N x D. A NaN or infinite embedding stops the write with a CactusError.
    """

    def transform(start: int) -> tuple[slice, np.ndarray]:
        rows = slice(start, min(start + chunk, len(images)))
        if hasattr(encoder, "transform_rows"):
            encoder.transform_rows(np.arange(rows.start, rows.stop), dataset_size=len(images))
        block = np.ascontiguousarray(encoder.transform(images[rows]), dtype=np.float32)
        if not np.isfinite(block).all():
            raise CactusError(f"--method {encoder.name}: the encoder produced NaN or infinite embeddings")
        return rows, block

    first = transform(0)

    def blocks() -> Iterator[tuple[slice, np.ndarray]]:
        yield first
        for start in range(chunk, len(images), chunk):
            yield transform(start)

    return RowStream((len(images), first[1].shape[1]), np.dtype(np.float32), blocks)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, so a changed input file changes the artifact key."""
    import hashlib

    from cactus.core.paths import require_regular_file

    require_regular_file(path, "file", name=f"--path {path}")  # /dev/zero or a FIFO would be read forever
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise CactusError(f"--path {path}: cannot read ({error.strerror})") from None
    return digest.hexdigest()


def load_encoder(artifact):
    """Rebuild the trained encoder stored in an embed artifact (its params and weights)."""
    from embeddings import encoder_class

    params = dict(artifact.config.get("encoder") or {})
    cls = encoder_class(params.pop("method", "pca"))
    encoder = cls.from_params(params, stored=artifact.path)
    try:
        encoder.set_state(artifact.group("encoder"))
    except (TypeError, KeyError, ValueError) as error:
        raise CactusError(f"{artifact.path}: stored encoder cannot be rebuilt ({error})") from None
    return encoder


def embed_stage(out: Path, settings: EmbedConfig, encoder_file: Path | None = None,
                force: bool = False) -> StageResult:
    """:func:`run_embed` with the declared settings of ``cactus embed`` (:class:`EmbedConfig`)."""
    return run_embed(out, settings.data, settings.method, settings.encoder_options(), encoder_file, force,
                     settings.resume, settings.checkpoint_every)
