"""What a report shows, gathered from a run folder: the artifacts, agreement with true classes, evaluation.

The agreement figures (adjusted Rand index, purity) read true labels of the meta-train split.
They are a diagnostic for the user, computed after the fact; nothing here writes back into an
artifact or feeds a training stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core.errors import CactusError
from cactus.core.store import Artifact, read_artifact

NAMES = {"embed": "embeddings.h5", "cluster": "partitions.h5", "tasks": "tasks.h5", "meta": "learner.h5"}

# Omniglot test accuracy (%) of CACTUs with an ACAI embedding, Hsu, Levine & Finn (ICLR 2019), Table 1.
PAPER_OMNIGLOT: dict[str, dict[tuple[int, int], float]] = {
    "CACTUs-MAML (ACAI), paper": {(5, 1): 68.84, (5, 5): 87.78, (20, 1): 48.09, (20, 5): 73.36},
    "CACTUs-ProtoNets (ACAI), paper": {(5, 1): 68.12, (5, 5): 83.58, (20, 1): 47.75, (20, 5): 66.27},
}


@dataclass
class Run:
    """The artifacts of one run folder (any of them may be missing)."""

    folder: Path
    artifacts: dict[str, Artifact]

    def get(self, stage: str) -> Artifact | None:
        return self.artifacts.get(stage)

    def data_ref(self):
        """The dataset reference of the latest artifact that carries one."""
        from cactus.stages.common import data_of

        for stage in ("meta", "tasks", "cluster", "embed"):
            artifact = self.artifacts.get(stage)
            if artifact is not None and "data" in artifact.attrs:
                return data_of(artifact)
        raise CactusError(f"{self.folder}: no artifact names its dataset")


def load_run(folder: Path) -> Run:
    """Read embeddings.h5, partitions.h5, tasks.h5 and learner.h5 from ``folder`` (those present)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CactusError(f"{folder}: no such run folder")
    artifacts = {stage: read_artifact(folder / name, stage=stage)
                 for stage, name in NAMES.items() if (folder / name).is_file()}
    if not artifacts:
        raise CactusError(f"{folder}: holds none of {', '.join(NAMES.values())}; give the --out-dir of a cactus run")
    return Run(folder, artifacts)


def purity(clusters: np.ndarray, classes: np.ndarray) -> float:
    """Fraction of items whose cluster's most common class is their own; clusters, classes (M,) int."""
    _, c = np.unique(clusters, return_inverse=True)
    _, y = np.unique(classes, return_inverse=True)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return float(table.max(axis=1).sum() / len(clusters))


def agreement(labels: np.ndarray, classes: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Agreement of P partitions with the true classes.

    labels: (P, M) int, -1 for items in dropped clusters; classes: (M,) true class of each item.
    Returns per-partition ARI / purity / kept fraction / cluster count, and the same two figures
    for partition 0 against a random permutation of the classes (what chance gives).
    """
    from sklearn.metrics import adjusted_rand_score

    per = []
    for p, partition in enumerate(labels):
        kept = partition >= 0
        per.append({"partition": p, "ari": float(adjusted_rand_score(classes[kept], partition[kept])),
                    "purity": purity(partition[kept], classes[kept]), "kept": float(kept.mean()),
                    "clusters": int(len(np.unique(partition[kept])))})
    kept = labels[0] >= 0
    shuffled = np.random.default_rng(seed).permutation(classes[kept])
    chance = {"ari": float(adjusted_rand_score(shuffled, labels[0][kept])),
              "purity": purity(labels[0][kept], shuffled)}
    ari = np.array([r["ari"] for r in per])
    pur = np.array([r["purity"] for r in per])
    return {"partitions": per, "chance": chance, "classes": int(len(np.unique(classes))),
            "items": int(labels.shape[1]),
            "summary": {"ari_mean": float(ari.mean()), "ari_std": float(ari.std()), "purity_mean": float(pur.mean()),
                        "purity_std": float(pur.std()), "ari_0": float(ari[0]), "purity_0": float(pur[0])}}


def evaluation(run: Run, ways: list[int], shots: list[int], num_tasks: int, seed: int, device: str,
               threads: int | None, compute: bool = True) -> tuple[list[dict], str]:
    """The evaluation reports and where they came from.

    Reads ``evaluation.json`` (written by ``cactus run``) when it was made for these very
    artifacts (same learner key); otherwise, with ``compute``, evaluates learner.h5 and the
    kNN baseline on embeddings.h5 on true-label tasks of the test classes.
    """
    saved = run.folder / "evaluation.json"
    if saved.is_file():
        try:
            summary = json.loads(saved.read_text())
            keys = {s.get("stage"): s.get("key") for s in summary.get("stages", [])}
            fresh = all(keys.get(stage) == artifact.key for stage, artifact in run.artifacts.items()
                        if stage in ("meta", "embed"))
            if fresh and summary.get("evaluation"):
                return list(summary["evaluation"]), f"{saved.name} (written by cactus run)"
        except (OSError, ValueError, AttributeError):
            pass
    if not compute:
        return [], "not evaluated (--no-evaluate)"
    from cactus.stages.evaluate import run_evaluate

    reports, skipped = [], []
    for stage, learner in (("meta", None), ("embed", "knn")):
        if stage not in run.artifacts:
            continue
        merged = None
        for n_way in ways:  # one way at a time: a MAML head fixes the largest N it can take
            try:
                report = run_evaluate(run.artifacts[stage].path, learner, [n_way], shots, 5, num_tasks, seed,
                                      device, threads)
            except CactusError as error:
                skipped.append(str(error))
                continue
            if merged is None:
                merged = report
            else:
                merged["results"] += report["results"]
        if merged is not None:
            reports.append(merged)
    note = f"computed now ({num_tasks} tasks per setting, seed {seed})"
    return reports, note + ("; skipped: " + "; ".join(skipped) if skipped else "")


def evaluation_table(reports: list[dict], omniglot: bool, encoder: str | None = None) -> dict[str, Any]:
    """Rows (learner, settings -> (accuracy, ci95)), plus the paper's rows on Omniglot."""
    embedding = f", {encoder} embedding" if encoder else ""
    settings = sorted({(r["ways"], r["shots"]) for report in reports for r in report.get("results", [])})
    rows = []
    for report in reports:
        cells = {(r["ways"], r["shots"]): (r["accuracy"], r["ci95"]) for r in report.get("results", [])}
        if report["learner"] in ("knn", "linear", "mlp", "ridge"):
            name = f"{report['learner']} on the {encoder + ' ' if encoder else ''}embedding"
        else:
            name = f"{report['learner']} (CACTUs, ours{embedding})"
        if report.get("supervised"):
            name += " [SUPERVISED oracle]"
        rows.append({"name": name, "cells": cells, "paper": False})
    if omniglot:
        paper_settings = sorted({s for row in PAPER_OMNIGLOT.values() for s in row})
        settings = sorted(set(settings) | set(paper_settings))
        rows += [{"name": name, "cells": {s: (v, None) for s, v in row.items()}, "paper": True}
                 for name, row in PAPER_OMNIGLOT.items()]
    return {"settings": settings, "rows": rows}


def curves(learner: Artifact | None) -> dict[str, np.ndarray]:
    """The meta-learner's /curve/* and /validation/* arrays (empty when absent)."""
    if learner is None:
        return {}
    return {name: np.asarray(value) for name, value in learner.arrays.items()
            if name.startswith(("curve/", "validation/"))}


def encoder_history(embed: Artifact | None) -> dict[str, list[float]]:
    """The encoder's training history as {series: values}; accepts {name: [..]} or [{name: v}, ...]."""
    history = embed.attrs.get("history") if embed is not None else None
    if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
        names = sorted({k for h in history for k, v in h.items() if isinstance(v, (int, float))})
        history = {k: [h.get(k, float("nan")) for h in history] for k in names}
    if not isinstance(history, dict):
        return {}
    series = {}
    for name, values in history.items():
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            series[str(name)] = [float(v) for v in values]
    return series
