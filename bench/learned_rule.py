"""Benchmark the shipped learned update rule on unseen Omniglot characters.

    python bench/learned_rule.py [--rule cactus/update_rule/default_rule.h5] [--tasks 1000]

The base MLPs are trained with the rule on the *unlabelled test-split images* (423 characters
the rule never saw: meta-training reads only the meta-train split), at the image size the rule was
meta-trained on. Each representation of the test images is then scored with the few-shot ridge
readout (``cactus.evaluation.baselines.evaluate_embedding(..., learner="ridge")``: 5-way 1-shot and 10-way
10-shot, 5 queries, 95% intervals over tasks), against the same MLP at its random initialisation
(same seed, zero steps), whitened pixel PCA (64-d, the project baseline) and raw pixels.

Transfer rows: a width and a depth outside the meta-training ranges, a fixed random permutation
of the pixels (the same permutation for every image), and 28x28 inputs when the rule was
meta-trained on another size.

Steps: the rule improves features in its first steps and then slowly degrades them, and how fast
depends on the base model (a 512-wide MLP peaks after 5-10 steps, a 128-wide one after ~25). So,
unless ``--steps`` fixes one count for all rows, every row picks its step count from
``--steps-grid`` on the *validation* characters (100 characters disjoint from both the rule's
meta-training characters and the test characters; their labels are used for this choice only),
by mean ridge accuracy over ``--selection-tasks`` tasks of each setting, and is then trained and
scored on the test characters with it: the usual hyperparameter selection on a validation split.

Writes ``bench/results/learned_rule.json`` and
``.md`` beside it, and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "omniglot"
SETTINGS = ((5, 1), (10, 10))


def ridge_scores(embeddings: np.ndarray, labels: np.ndarray, tasks: int, seed: int) -> dict:
    """5-way 1-shot and 10-way 10-shot ridge accuracy (%, ci95)."""
    from cactus.evaluation.baselines import evaluate_embedding

    out = {}
    for ways, shots in SETTINGS:
        result = evaluate_embedding(embeddings, labels, "ridge", ways=ways, shots=shots, queries=5,
                                    n_tasks=tasks, seed=seed)
        out[f"{ways}way{shots}shot"] = {"accuracy": round(result["accuracy"], 2), "ci95": round(result["ci95"], 2)}
    return out


def choose_steps(images, labels, rule, width, depth, grid, tasks, seed) -> tuple[int, dict]:
    """The step count of ``grid`` whose rule-trained MLP has the best mean ridge accuracy on
    (validation) images (N, H, W, C) with labels (N,); returns it and {steps: mean accuracy}."""
    from embeddings.learned_rule import LearnedRuleEncoder

    scores = {}
    for steps in grid:
        encoder = LearnedRuleEncoder(width=width, depth=depth, steps=steps, rule=rule, seed=seed).fit(images)
        result = ridge_scores(encoder.transform(images), labels, tasks, seed)
        scores[steps] = round(float(np.mean([r["accuracy"] for r in result.values()])), 2)
    best = max(grid, key=lambda steps: scores[steps])
    print(f"#   width {width}, depth {depth}: validation mean accuracy by steps {scores} -> {best}", file=sys.stderr)
    return best, scores


def rule_vs_random(images, labels, rule, width, depth, steps, tasks, seed) -> dict:
    """Ridge scores of the rule-trained MLP and of the same MLP untrained (same seed)."""
    from embeddings.learned_rule import LearnedRuleEncoder

    row = {"width": width, "depth": depth, "steps": steps}
    for name, n_steps in (("rule", steps), ("random_init", 0)):
        start = time.perf_counter()
        encoder = LearnedRuleEncoder(width=width, depth=depth, steps=n_steps, rule=rule, seed=seed).fit(images)
        row[name] = ridge_scores(encoder.transform(images), labels, tasks, seed)
        row[name]["fit_seconds"] = round(time.perf_counter() - start, 2)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default=None, help="Rule .h5 [the shipped rule].")
    parser.add_argument("--data", default=f"omniglot:{DEFAULT_DATA}")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None,
                        help="Unsupervised steps for every row [chosen per row on validation characters].")
    parser.add_argument("--steps-grid", default="5,10,25,50", help="Step counts the per-row choice tries.")
    parser.add_argument("--selection-tasks", type=int, default=300, help="Validation tasks per setting.")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "learned_rule.json")
    args = parser.parse_args(argv)

    import torch

    from cactus.datasets.dataset import TEST, VAL, load_dataset
    from embeddings.learned_rule import DEFAULT_RULE, default_steps, load_rule
    from embeddings.pca import PCAEncoder

    torch.set_num_threads(args.threads)
    rule_path = args.rule or str(DEFAULT_RULE)
    _, artifact = load_rule(rule_path)
    config = artifact.config
    size = int(artifact.attrs.get("image_shape", [28])[0])
    grid = [int(s) for s in args.steps_grid.split(",")]
    ds = load_dataset(args.data, image_size=size)
    rows, val_rows = ds.indices(TEST), ds.indices(VAL)
    images, labels = ds.images[rows], ds.true_labels()[rows]
    val_images, val_labels = ds.images[val_rows], ds.true_labels()[val_rows]
    selection: dict = {}

    def compare(key: str, test_images, validation_images, width: int, depth: int) -> None:
        steps = args.steps
        if steps is None:
            steps, selection[key] = choose_steps(validation_images, val_labels, rule_path, width, depth, grid,
                                                 args.selection_tasks, args.seed)
        rows_out[key] = rule_vs_random(test_images, labels, rule_path, width, depth, steps, args.tasks, args.seed)
    started = time.perf_counter()

    results: dict = {"rule": rule_path, "rule_key": artifact.key, "rule_config": config,
                     "data": args.data, "image_size": size, "eval_images": "test split (unlabelled for training)",
                     "n_images": int(len(rows)), "n_classes": int(len(np.unique(labels))), "tasks": args.tasks,
                     "seed": args.seed, "machine": platform.machine(), "threads": args.threads, "rows": {},
                     "rule_default_steps": default_steps(artifact),
                     "steps": args.steps if args.steps is not None else f"chosen per row on validation from {grid}",
                     "validation_mean_accuracy_by_steps": selection}
    rows_out = results["rows"]
    print(f"# learned rule on {len(rows)} unseen test images ({size}x{size})", file=sys.stderr)
    compare("in_range", images, val_images, args.width, args.depth)
    pca = PCAEncoder(dim=64).fit(images)
    results["pca64"] = ridge_scores(pca.transform(images), labels, args.tasks, args.seed)
    results["pixels"] = ridge_scores(images.reshape(len(images), -1).astype(np.float32), labels, args.tasks,
                                     args.seed)
    wide = 4 * int(config["width_range"][1])
    deep = int(config["depth_range"][1]) + 1
    shallow = int(config["depth_range"][0]) - 1
    compare("wider", images, val_images, wide, args.depth)
    compare("deeper", images, val_images, args.width, deep)
    if shallow >= 1:
        compare("shallower", images, val_images, args.width, shallow)
    permutation = np.random.default_rng(1234).permutation(size * size)

    def permute(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, permutation].reshape(x.shape)

    compare("permuted_pixels", permute(images), permute(val_images), args.width, args.depth)
    if size != 28:
        big = load_dataset(args.data, image_size=28)
        compare("28x28_inputs", big.images[rows], big.images[val_rows], args.width, args.depth)
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return results


def _cell(score: dict) -> str:
    return f"{score['accuracy']:.1f} ± {score['ci95']:.1f}"


def markdown(results: dict) -> str:
    """The table: one line per base model, rule vs random init, and the PCA / pixel baselines."""
    head = "| base model | training | 5-way 1-shot | 10-way 10-shot |\n|---|---|---|---|"
    lines = [head]
    labels = {"in_range": "in range", "wider": "width outside range", "deeper": "depth above range",
              "shallower": "depth below range",
              "permuted_pixels": "permuted pixels", "28x28_inputs": "28x28 inputs"}
    for key, row in results["rows"].items():
        what = f"{labels[key]}: width {row['width']}, depth {row['depth']}"
        for name in ("rule", "random_init"):
            training = f"learned rule, {row['steps']} steps" if name == "rule" else "random init"
            lines.append(f"| {what} | {training} | {_cell(row[name]['5way1shot'])} | "
                         f"{_cell(row[name]['10way10shot'])} |")
    for name, title in (("pca64", "pixel PCA, 64-d whitened"), ("pixels", "raw pixels")):
        lines.append(f"| {title} | - | {_cell(results[name]['5way1shot'])} | {_cell(results[name]['10way10shot'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
