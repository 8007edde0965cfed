"""Omniglot's original one-shot benchmark (Lake et al., 2015): 20 runs of 20-way 1-shot.

Each run of ``one_shot_classification_all_runs.zip`` has 20 training images (one per class),
20 test images and ``class_labels.txt`` pairing each test image with its class. The images
belong to the evaluation alphabets, so a learner for this benchmark must be trained on
``--split lake`` (background alphabets only).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from cactus.datasets.readers import _resize_strokes, decode_image

RUNS = 20
WAYS = 20
ZIP_NAME = "one_shot_classification_all_runs.zip"


@dataclass
class LakeRun:
    """One run: support (20, S, S, 1) uint8 (class i is row i), query (20, S, S, 1), query_labels (20,)."""

    name: str
    support: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def load_lake_runs(path: Path, image_size: int) -> list[LakeRun]:
    """Read the 20 runs, preprocessed like the Omniglot loader (inverted, resized)."""
    if not path.is_file():
        raise CactusError(f"--runs {path}: no such file (Omniglot's {ZIP_NAME})")
    runs = []
    try:
        with zipfile.ZipFile(path) as archive:
            def image(name: str) -> np.ndarray:
                pixels = decode_image(archive.read(name), f"{path}:{name}", None, mode="L")
                return _resize_strokes(255 - pixels, image_size)[..., None]

            for r in range(1, RUNS + 1):
                run = f"run{r:02d}"
                pairs = [line.split() for line in archive.read(f"{run}/class_labels.txt").decode().splitlines()
                         if line.strip()]
                classes = sorted({train for _, train in pairs})
                if len(pairs) != WAYS or len(classes) != WAYS:
                    raise CactusError(f"{path}: {run}/class_labels.txt does not pair 20 test images with 20 classes")
                support = np.stack([image(c) for c in classes])
                query = np.stack([image(test) for test, _ in pairs])
                labels = np.asarray([classes.index(train) for _, train in pairs], dtype=np.int64)
                runs.append(LakeRun(run, support, query, labels))
    except (zipfile.BadZipFile, KeyError) as error:
        raise CactusError(f"{path}: not Omniglot's one-shot runs archive ({error})") from None
    return runs


def default_runs_path(data_spec: str) -> Path | None:
    """Beside the Omniglot folder of ``omniglot:PATH``."""
    kind, _, folder = data_spec.partition(":")
    return Path(folder) / ZIP_NAME if kind == "omniglot" and folder else None


def error_rates(predict, runs: list[LakeRun]) -> dict:
    """Per-run and overall error rate (%) of ``predict(support, support_labels, query) -> labels``."""
    per_run = {}
    for run in runs:
        predicted = predict(run.support, np.arange(WAYS), run.query)
        per_run[run.name] = float((np.asarray(predicted) != run.query_labels).mean() * 100)
    return {"per_run_error": per_run, "error": float(np.mean(list(per_run.values())))}
