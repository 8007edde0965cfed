"""``build_report``: draw a run folder's figures and write RUN_DIR/report.html beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.report import collect, figures
from cactus.report import html as page_html

MAPS = ("auto", "pca", "tsne")
TSNE_AUTO_BELOW = 2000  # "auto" draws t-SNE of all meta-train points when there are at most this many


def build_report(
    run_dir: Path,
    out: Path | None = None,
    map_method: str = "auto",
    map_points: int | None = None,
    tasks_shown: int = 3,
    evaluate: bool = True,
    eval_ways: list[int] | None = None,
    eval_shots: list[int] | None = None,
    eval_tasks: int = 1000,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    inline: bool = False,
) -> dict[str, Any]:
    """Write ``out`` (default RUN_DIR/report.html), its PNG figures beside it and report.json.

    map_method: pca, tsne, or auto (t-SNE up to 2000 meta-train images, else PCA).
    map_points: points in the 2-D map (default 5000 for PCA, 2000 for t-SNE), drawn at random
    from the meta-train images. Returns a JSON-able summary (paths, agreement, evaluation).
    """
    from cactus.core.errors import CactusError

    if map_method not in MAPS:
        raise CactusError(f"--map {map_method!r}: expected auto, pca or tsne")
    run = collect.load_run(Path(run_dir))
    out = Path(out) if out is not None else run.folder / "report.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CactusError(f"--out {out}: cannot create its folder ({error.strerror})") from None
    ref = run.data_ref()
    dataset = ref.load()
    omniglot = ref.spec.split(":", 1)[0] == "omniglot"
    rng = np.random.default_rng(seed)
    drawn: list[tuple[str, Path, str]] = []  # (key, png, caption)
    summary: dict[str, Any] = {"run_dir": str(run.folder), "data": ref.spec,
                               "artifacts": {s: str(a.path) for s, a in run.artifacts.items()}}

    def png(name: str) -> Path:
        return out.parent / f"{out.stem}_{name}.png"

    embed, clustered, tasks, learner = (run.get(s) for s in ("embed", "cluster", "tasks", "meta"))
    classes_all = dataset.true_labels()  # evaluation-side diagnostic only; never written to an artifact
    if clustered is not None:
        labels, rows = clustered.array("labels"), clustered.array("rows")
        agree = collect.agreement(labels, classes_all[rows], seed)
        summary["agreement"] = {**agree["summary"], "chance": agree["chance"], "classes": agree["classes"],
                                "items": agree["items"]}
        log.info(f"report: partitions vs. true classes: ARI {agree['summary']['ari_mean']:.3f}, "
                 f"purity {agree['summary']['purity_mean']:.3f} (mean over {len(labels)} partitions)")
        drawn.append(("agreement", figures.agreement_plot(agree["partitions"], agree["chance"], png("agreement")),
                      "Agreement of each partition with the true classes of the meta-train images: adjusted Rand "
                      "index (0 = chance, 1 = the classes exactly) and purity; the dashed line is partition 0 "
                      "against shuffled classes."))
        min_size = clustered.config.get("min_cluster_size")
        drawn.append(("cluster_sizes", figures.cluster_sizes(labels, min_size, png("cluster_sizes")),
                      "Cluster sizes of the k-means partitions (clusters below the minimum size are dropped, "
                      "their images get no pseudo-label in that partition)."))
    else:
        agree = None
    if embed is not None:
        embeddings = embed.array("embeddings")
        if clustered is not None:
            map_rows, map_clusters = clustered.array("rows"), clustered.array("labels")[0]
        else:
            map_rows = np.flatnonzero(embed.array("split") == 0)
            map_clusters = np.zeros(len(map_rows), dtype=np.int64)
        if map_method == "auto":
            map_method = "tsne" if len(map_rows) <= TSNE_AUTO_BELOW else "pca"
        limit = map_points or (5000 if map_method == "pca" else 2000)
        pick = np.sort(rng.choice(len(map_rows), size=min(limit, len(map_rows)), replace=False))
        xy = figures.project_2d(embeddings[map_rows[pick]], map_method, seed)
        n_clusters = int(len(np.unique(map_clusters[map_clusters >= 0])))
        drawn.insert(0, ("embedding_map", figures.embedding_map(xy, map_clusters[pick], classes_all[map_rows[pick]],
                                                                png("embedding_map"), map_method, n_clusters),
                         f"2-D {'PCA' if map_method == 'pca' else 't-SNE'} map of {len(pick)} meta-train embeddings "
                         f"({embeddings.shape[1]}-d, encoder {embed.config.get('encoder', {}).get('method', '?')}), "
                         "coloured by their cluster in partition 0 (grey: dropped small clusters); right, the "
                         "same points by true class, for comparison only."))
        history = collect.encoder_history(embed)
        if history:
            drawn.append(("encoder_curves", figures.history_curves(history, png("encoder_curves")),
                          "Training of the encoder (its recorded history)."))
    if tasks is not None:
        drawn.append(("tasks", _task_figure(tasks, dataset.images, tasks_shown, rng, png("tasks")),
                      "Pseudo-tasks sampled from the partitions: a row per pseudo-class (cluster), its support "
                      "images (orange border) then its query images (grey border)."))
    meta_arrays = collect.curves(learner)
    if meta_arrays.get("curve/loss") is not None and len(meta_arrays["curve/loss"]):
        drawn.append(("meta_curves", figures.meta_curves(meta_arrays, png("meta_curves")),
                      "Meta-training of the learner on the pseudo-tasks: loss, training query accuracy and the "
                      "validation accuracy (held-out pseudo-tasks or validation classes, as configured)."))
    ways = eval_ways or ([5, 20] if omniglot else [5])
    shots = eval_shots or [1, 5]
    settings = {"ways": ways, "shots": shots, "tasks": eval_tasks, "seed": seed}
    reports, source = _earlier_evaluation(out.with_suffix(".json"), run, settings)
    if not reports:
        reports, source = collect.evaluation(run, ways, shots, eval_tasks, seed, device, threads, evaluate)
    summary["keys"] = {stage: artifact.key for stage, artifact in run.artifacts.items()}
    summary["evaluation_settings"] = settings
    encoder = (embed.config.get("encoder") or {}).get("method") if embed is not None else None
    table = collect.evaluation_table(reports, omniglot, encoder)
    if table["rows"]:
        drawn.append(("evaluation", figures.evaluation_bars(table, png("evaluation")),
                      "Test accuracy with 95% intervals" + (" beside the CACTUs paper's Omniglot numbers (hatched)"
                                                            if omniglot else "") + "."))
    summary["evaluation"] = {"source": source, "reports": reports}
    summary["figures"] = {key: str(path) for key, path, _ in drawn}
    captions = {key: (path, caption) for key, path, caption in drawn}

    def fig(key: str) -> str:
        path, caption = captions.get(key, (None, ""))
        return page_html.figure(path, caption, inline)

    sections = [
        ("Evaluation", page_html.evaluation_html(table, source) + fig("evaluation")),
        ("Embedding", fig("embedding_map") + fig("encoder_curves")),
        ("Partitions", (page_html.agreement_html(agree) if agree else "") + fig("agreement") + fig("cluster_sizes")),
        ("Pseudo-tasks", fig("tasks")),
        ("Meta-training", fig("meta_curves")),
        ("Artifacts", page_html.artifacts_html(run.artifacts)),
    ]
    intro = (f"<p>Run folder <code>{page_html.esc(run.folder)}</code>, dataset <code>{page_html.esc(ref.spec)}"
             f"</code> ({len(dataset)} images of {'x'.join(map(str, dataset.image_shape))}).</p>")
    _write_text(out, page_html.page(f"cactus report: {run.folder.name}", sections, intro))
    summary["report"] = str(out)
    _write_text(out.with_suffix(".json"), json.dumps(_jsonable(summary), indent=2, sort_keys=True) + "\n")
    return _jsonable(summary)


def _earlier_evaluation(path: Path, run, settings: dict) -> tuple[list[dict], str]:
    """The evaluation an earlier report computed, if it was for the same artifacts and settings."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], ""
    same = earlier.get("keys") == {stage: a.key for stage, a in run.artifacts.items()} and \
        earlier.get("evaluation_settings") == settings
    evaluation = earlier.get("evaluation") or {}
    if not same or not evaluation.get("reports"):
        return [], ""
    first = str(evaluation.get("source", "")).replace("computed now", "computed")
    first = first.split("; reused from")[0].split(", by an earlier report")[0]
    return list(evaluation["reports"]), f"{first}, by an earlier report for these artifacts ({path.name})"


def _task_figure(tasks, images: np.ndarray, shown: int, rng: np.random.Generator, path: Path) -> Path:
    cfg = tasks.config
    ways, shots, queries = int(cfg["ways"]), int(cfg["shots"]), int(cfg["queries"])
    support, query = tasks.array("support"), tasks.array("query")
    partition = tasks.arrays.get("partition")
    chosen = np.sort(rng.choice(len(support), size=min(shown, len(support)), replace=False))
    mosaics, titles = [], []
    for t in chosen:
        mosaics.append(figures.task_mosaic(images, support[t], query[t], ways, shots, queries))
        part = f", partition {int(partition[t])}" if partition is not None else ""
        more = f" (first 10 of {ways} rows)" if ways > 10 else ""
        titles.append(f"task {int(t)}{part}: {ways}-way {shots}-shot{more}")
    return figures.task_grid(mosaics, titles, path)


def _write_text(path: Path, text: str) -> None:
    from cactus.core.atomic import write_text

    write_text(path, text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
