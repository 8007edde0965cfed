"""The report's figures, drawn with matplotlib (Agg, imported lazily) into PNG files.

Each function takes plain arrays and the PNG path to write, and returns that path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def project_2d(points: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(M, D) -> (M, 2): the two leading principal components, or t-SNE (PCA-initialised)."""
    points = np.asarray(points, dtype=np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def embedding_map(xy: np.ndarray, clusters: np.ndarray, classes: np.ndarray | None, path: Path, method: str,
                  n_clusters: int) -> Path:
    """Scatter of the 2-D map (M, 2) coloured by partition-0 cluster (and, beside it, by true class).

    clusters: (M,) int, -1 = dropped cluster (grey); classes: (M,) int or None.
    """
    plt = _pyplot()
    panels = 2 if classes is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.6), squeeze=False)
    name = "PCA" if method == "pca" else "t-SNE"
    colour_sets = [(clusters, f"coloured by cluster of partition 0 ({n_clusters} clusters)")]
    if classes is not None:
        colour_sets.append((classes, f"coloured by true class ({len(np.unique(classes))}; diagnostic only)"))
    size = float(np.clip(12000 / max(1, len(xy)), 3, 16))
    for ax, (values, title) in zip(axes[0], colour_sets, strict=False):
        dropped = values < 0
        ax.scatter(xy[dropped, 0], xy[dropped, 1], s=size, c="lightgrey", linewidths=0)
        _, codes = np.unique(values[~dropped], return_inverse=True)
        # shuffled codes so that neighbouring ids do not get neighbouring colours
        codes = np.random.default_rng(0).permutation(codes.max() + 1)[codes] if codes.size else codes
        ax.scatter(xy[~dropped, 0], xy[~dropped, 1], s=size, c=codes % 20, cmap="tab20", vmin=0, vmax=19,
                   linewidths=0)
        ax.set_title(f"{name} of the embedding, {title}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def _tile(image: np.ndarray, border: tuple[float, float, float], pad: int) -> np.ndarray:
    """(H, W, C) uint8 -> (H + 2 pad, W + 2 pad, 3) float RGB in [0, 1] with a coloured border."""
    rgb = image.astype(np.float32) / 255.0
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    out = np.empty((rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad, 3), dtype=np.float32)
    out[:] = border
    out[pad:-pad, pad:-pad] = rgb
    return out


SUPPORT_BORDER = (0.93, 0.55, 0.10)  # orange: the task's training (support) examples
QUERY_BORDER = (0.55, 0.55, 0.55)  # grey: its test (query) examples


def task_mosaic(images: np.ndarray, support: np.ndarray, query: np.ndarray, ways: int, shots: int,
                queries: int, max_ways: int = 10, max_queries: int = 5) -> np.ndarray:
    """One task as an RGB mosaic: a row per pseudo-class, its K support then Q query images.

    images: (N_images, H, W, C) uint8; support (ways*shots,), query (ways*queries,) indices, class-major.
    """
    pad = max(1, images.shape[1] // 14)
    gap = np.ones((images.shape[1] + 2 * pad, 2 * pad + 2, 3), dtype=np.float32)
    rows = []
    for c in range(min(ways, max_ways)):
        tiles = [_tile(images[i], SUPPORT_BORDER, pad) for i in support[c * shots:(c + 1) * shots]]
        tiles.append(gap)
        tiles += [_tile(images[i], QUERY_BORDER, pad) for i in query[c * queries:(c + 1) * queries][:max_queries]]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def task_grid(mosaics: list[np.ndarray], titles: list[str], path: Path) -> Path:
    """Several task mosaics side by side."""
    plt = _pyplot()
    height = max(m.shape[0] for m in mosaics)
    widths = [m.shape[1] for m in mosaics]
    scale = 4.2 / max(widths)
    fig, axes = plt.subplots(1, len(mosaics), figsize=(sum(widths) * scale + 0.4 * len(mosaics),
                                                      max(2.2, height * scale + 0.7)), squeeze=False)
    for ax, mosaic, title in zip(axes[0], mosaics, titles, strict=False):
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return _save(fig, path)


def cluster_sizes(labels: np.ndarray, min_size: int | None, path: Path) -> Path:
    """Histogram of cluster sizes: partition 0 and all P partitions pooled. labels: (P, M) int."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (rows, title) in zip(axes, ((labels[:1], "partition 0"), (labels, f"all {len(labels)} partitions")),
                                 strict=False):
        sizes = np.concatenate([np.bincount(p[p >= 0]) for p in rows])
        sizes = sizes[sizes > 0]
        ax.hist(sizes, bins=min(50, max(5, len(np.unique(sizes)))), color="#4477aa")
        if min_size:
            ax.axvline(min_size, color="#cc3311", linestyle="--", label=f"min size {min_size} (smaller dropped)")
            ax.legend(fontsize=8)
        ax.set_xlabel("images in the cluster")
        ax.set_ylabel("clusters")
        ax.set_title(f"Cluster sizes, {title} (median {np.median(sizes):.0f})", fontsize=9)
    return _save(fig, path)


def agreement_plot(per_partition: list[dict], chance: dict, path: Path) -> Path:
    """ARI and purity of each partition with the true classes, with partition 0 against shuffled classes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    index = [r["partition"] for r in per_partition]
    for ax, key, label in ((axes[0], "ari", "adjusted Rand index"), (axes[1], "purity", "purity")):
        values = [r[key] for r in per_partition]
        ax.plot(index, values, "o-", ms=3, color="#228833", label="partition vs. true classes")
        ax.axhline(chance[key], color="#bbbbbb", linestyle="--", label="partition 0 vs. shuffled classes")
        ax.set_xlabel("partition (0 = unscaled embedding)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}: mean {np.mean(values):.3f} over {len(values)} partitions", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def meta_curves(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """Meta-training loss and accuracy per logged iteration, and the validation accuracy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    iteration = arrays.get("curve/iteration", np.arange(len(arrays.get("curve/loss", []))))
    window = max(1, len(iteration) // 50)
    loss = arrays.get("curve/loss")
    if loss is not None and len(loss):
        axes[0].plot(iteration, loss, color="#bbccee", lw=0.8, label="per iteration")
        axes[0].plot(iteration[window - 1:], _smooth(loss, window), color="#4477aa", label=f"mean of {window}")
        axes[0].legend(fontsize=8)
    axes[0].set_title("meta-training loss (pseudo-tasks)", fontsize=9)
    axes[0].set_xlabel("iteration")
    accuracy = arrays.get("curve/accuracy")
    if accuracy is not None and len(accuracy):
        axes[1].plot(iteration[window - 1:], _smooth(accuracy, window), color="#4477aa",
                     label="training query accuracy")
    val_it, val_acc = arrays.get("validation/iteration"), arrays.get("validation/accuracy")
    if val_acc is not None and len(val_acc):
        axes[1].plot(val_it, val_acc, "o-", color="#ee6677", label="validation accuracy")
    axes[1].set_title("accuracy (%)", fontsize=9)
    axes[1].set_xlabel("iteration")
    if axes[1].lines:
        axes[1].legend(fontsize=8)
    return _save(fig, path)


def history_curves(history: dict[str, list[float]], path: Path) -> Path:
    """The encoder's training history: one panel per series (loss per epoch, ...)."""
    plt = _pyplot()
    names = [n for n in history if n not in ("epoch", "step", "iteration")]
    x_name = next((n for n in ("epoch", "step", "iteration") if n in history), None)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 0.6, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        values = history[name]
        x = history[x_name] if x_name else list(range(1, len(values) + 1))
        ax.plot(x, values, "o-", ms=3, color="#aa3377")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_name or "epoch")
    return _save(fig, path)


def evaluation_bars(table: dict, path: Path) -> Path:
    """Test accuracy per setting with 95% intervals: ours beside the paper's."""
    plt = _pyplot()
    settings, rows = table["settings"], table["rows"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(settings) * max(1, len(rows)) / 2), 3.8))
    width = 0.8 / max(1, len(rows))
    colours = ["#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377"]
    for r, row in enumerate(rows):
        xs, ys, errs = [], [], []
        for s, setting in enumerate(settings):
            if setting in row["cells"]:
                value, ci = row["cells"][setting]
                xs.append(s + (r - (len(rows) - 1) / 2) * width)
                ys.append(value)
                errs.append(ci or 0.0)
        ax.bar(xs, ys, width, yerr=None if row["paper"] else errs, capsize=2, label=row["name"],
               color=colours[r % len(colours)], hatch="//" if row["paper"] else None, edgecolor="white")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([f"{w}-way {k}-shot" for w, k in settings])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Few-shot accuracy on true-label tasks of held-out classes (95% intervals)", fontsize=9)
    return _save(fig, path)
