"""What every stage shares: the cache check, the result it reports, and the dataset reference."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import cached_key, compute_key
from cactus.datasets.dataset import SPLIT_RULES
from cactus.stages.options import Checked, option


@dataclass
class StageResult:
    """What a stage reports: where its artifact is, its key, whether it was reused, and figures."""

    stage: str
    path: Path
    key: str
    skipped: bool
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "path": str(self.path), "key": self.key, "skipped": self.skipped,
                "seconds": round(self.seconds, 3), **self.summary}


def up_to_date(stage: str, out: Path, config: dict, inputs: list[str], force: bool,
               lock: bool = True) -> tuple[str, bool]:
    """The stage's key and whether ``out`` already holds it (then the stage is skipped and says so).

    When the stage must run, the lock ``out.lock`` is taken first (waiting while another job
    writes ``out``) and the cache checked again, so a job that waited reuses what the other one
    wrote. The lock is held until :func:`cactus.core.store.write_artifact` has written ``out`` (or the
    process ends); ``lock=False`` skips it (ranks > 0 of a distributed job, which never write).
    """
    from cactus.core import lock as locks
    from cactus.core.overwrite import check_output_path

    check_output_path(out, stage)  # before any work: --out may only replace an artifact of this stage
    key = compute_key(stage, config, inputs)
    if not force and cached_key(out, key):
        log.info(f"{stage}: {out} is up to date (key {key[:12]}), skipping; --force recomputes")
        return key, True
    if not lock:
        return key, False
    waited = locks.acquire(out)
    if waited and not force and cached_key(out, key):
        locks.release(out)
        log.info(f"{stage}: {out} was just written by another job with the same key {key[:12]}; reusing it")
        return key, True
    return key, False


def torch_threads() -> int | None:
    """The CPU threads torch computed with (None when the stage never used torch).

    Stored with an artifact so replay runs with the same count: float sums, and so the weights, depend on it.
    """
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


@dataclass(frozen=True)
class DataRef(Checked):
    """How to load the dataset again: recorded in every artifact so later stages find the images.

    Its fields are the ``--data``, ``--image-size``, ``--split``, ``--split-seed`` and ``--grey`` options of
    the commands that read a dataset (embed, meta's oracle, run). ``grey`` is recorded only when set, so
    artifacts made before it existed keep their keys.
    """

    spec: str = option("digits", "digits | omniglot:PATH | idx:PATH | folder:PATH | npz:PATH | h5:PATH", name="data")
    image_size: int | None = option(None, "Resize images to SIZE x SIZE (Omniglot: 28).", kind=int, low=1)
    split: str = option("default", "How images are split into meta-train / validation / test.",
                        choices=SPLIT_RULES)
    split_seed: int = option(0, "Seed of the class split.", kind=int, low=0)
    grey: bool = option(False, "Convert colour images to one grey channel (ITU-R 601 luma).", kind=bool)

    def as_dict(self) -> dict[str, Any]:
        """The reference as recorded (and hashed into the keys): the path made absolute, so ``~/d``,
        ``./d`` and ``/home/u/d`` are one dataset and a later stage run elsewhere still finds it."""
        ref = {"spec": absolute_spec(self.spec), "image_size": self.image_size, "split": self.split,
               "split_seed": self.split_seed}
        return {**ref, "grey": True} if self.grey else ref

    @classmethod
    def from_dict(cls, value: Any, where: Path) -> DataRef:
        try:
            grey = value.get("grey", False)
            if not isinstance(grey, bool):
                raise TypeError("grey")
            return cls(str(value["spec"]), value["image_size"], str(value["split"]), int(value["split_seed"]), grey)
        except (KeyError, TypeError, ValueError, AttributeError, CactusError):
            raise CactusError(f"{where}: artifact has no valid dataset reference") from None

    def load(self):
        from cactus.datasets.dataset import load_dataset

        return load_dataset(self.spec, self.image_size, self.split, self.split_seed, self.grey)


def absolute_spec(spec: str) -> str:
    """``kind:PATH`` with PATH expanded (``~``) and made absolute; a spec without a path as it is."""
    kind, sep, path = spec.partition(":")
    return f"{kind}:{os.path.abspath(os.path.expanduser(path))}" if sep and path else spec


def data_of(artifact) -> DataRef:
    """The dataset reference an artifact carries in its ``data`` attribute."""
    return DataRef.from_dict(artifact.attrs.get("data"), artifact.path)


def check_fingerprint(artifact, dataset) -> None:
    """Refuse an artifact whose dataset has changed since it was made."""
    expected = artifact.attrs.get("data_fingerprint")
    if expected is not None and expected != dataset.fingerprint():
        raise CactusError(
            f"{artifact.path}: made from a different version of --data {dataset.spec} "
            "(images or split changed); recompute it"
        )
