"""Benchmark the shipped learned update rule on unseen Omniglot characters.

    python bench/learned_rule.py [--rule cactus/rules/default_rule.h5] [--tasks 1000]

The base MLPs are trained with the rule on the *unlabelled test-split images* (423 characters
the rule never saw: meta-training reads only the meta-train split), at the image size the rule was
meta-trained on. Each representation of the test images is then scored with the few-shot ridge
readout (``cactus.baselines.evaluate_embedding(..., learner="ridge")``: 5-way 1-shot and 10-way
10-shot, 5 queries, 95% intervals over tasks), against the same MLP at its random initialisation
(same seed, zero steps), whitened pixel PCA (64-d, the project baseline) and raw pixels.

Transfer rows: a width and a depth outside the meta-training ranges, a fixed random permutation
of the pixels (the same permutation for every image), and 28x28 inputs when the rule was
meta-trained on another size. Writes ``bench/results/learned_rule.json`` and
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
    from cactus.baselines import evaluate_embedding

    out = {}
    for ways, shots in SETTINGS:
        result = evaluate_embedding(embeddings, labels, "ridge", ways=ways, shots=shots, queries=5,
                                    n_tasks=tasks, seed=seed)
        out[f"{ways}way{shots}shot"] = {"accuracy": round(result["accuracy"], 2), "ci95": round(result["ci95"], 2)}
    return out


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
    parser.add_argument("--steps", type=int, default=None, help="Unsupervised steps [the rule's default].")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "learned_rule.json")
    args = parser.parse_args(argv)

    import torch

    from cactus.data import TEST, load_dataset
    from embeddings.learned_rule import DEFAULT_RULE, default_steps, load_rule
    from embeddings.pca import PCAEncoder

    torch.set_num_threads(args.threads)
    rule_path = args.rule or str(DEFAULT_RULE)
    _, artifact = load_rule(rule_path)
    config = artifact.config
    size = int(artifact.attrs.get("image_shape", [28])[0])
    steps = args.steps if args.steps is not None else default_steps(artifact)
    ds = load_dataset(args.data, image_size=size)
    rows = ds.indices(TEST)
    images, labels = ds.images[rows], ds.true_labels()[rows]
    started = time.perf_counter()

    results: dict = {"rule": rule_path, "rule_key": artifact.key, "rule_config": config,
                     "data": args.data, "image_size": size, "eval_images": "test split (unlabelled for training)",
                     "n_images": int(len(rows)), "n_classes": int(len(np.unique(labels))), "tasks": args.tasks,
                     "seed": args.seed, "machine": platform.machine(), "threads": args.threads, "rows": {}}
    rows_out = results["rows"]
    print(f"# learned rule on {len(rows)} unseen test images ({size}x{size})", file=sys.stderr)
    rows_out["in_range"] = rule_vs_random(images, labels, rule_path, args.width, args.depth, steps, args.tasks,
                                          args.seed)
    pca = PCAEncoder(dim=64).fit(images)
    results["pca64"] = ridge_scores(pca.transform(images), labels, args.tasks, args.seed)
    results["pixels"] = ridge_scores(images.reshape(len(images), -1).astype(np.float32), labels, args.tasks,
                                     args.seed)
    wide = 4 * int(config["width_range"][1])
    deep = int(config["depth_range"][1]) + 1
    shallow = int(config["depth_range"][0]) - 1
    rows_out["wider"] = rule_vs_random(images, labels, rule_path, wide, args.depth, steps, args.tasks, args.seed)
    rows_out["deeper"] = rule_vs_random(images, labels, rule_path, args.width, deep, steps, args.tasks, args.seed)
    if shallow >= 1:
        rows_out["shallower"] = rule_vs_random(images, labels, rule_path, args.width, shallow, steps, args.tasks,
                                               args.seed)
    permutation = np.random.default_rng(1234).permutation(size * size)
    flat = images.reshape(len(images), -1)[:, permutation].reshape(images.shape)
    rows_out["permuted_pixels"] = rule_vs_random(flat, labels, rule_path, args.width, args.depth, steps,
                                                 args.tasks, args.seed)
    if size != 28:
        big = load_dataset(args.data, image_size=28)
        rows_out["28x28_inputs"] = rule_vs_random(big.images[rows], labels, rule_path, args.width, args.depth,
                                                  steps, args.tasks, args.seed)
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
