"""Benchmark one encoder on Omniglot: fit time and kNN few-shot accuracy beside pixel PCA.

    python bench/encoders.py --method contrastive [--setting quick|full] [--param epochs=5 ...]

Loads Omniglot (28x28, default split), fits the encoder on the meta-train split images only,
embeds the test split, and measures 5-way 1-shot and 5-way 5-shot 1-NN accuracy
(``cactus.evaluation.baselines.evaluate_embedding``: 1000 tasks, 5 queries, seed 0). Pixel PCA (64-d,
whitened) is measured in the same run. Prints the figures and writes
``bench/results/encoder_<method>_<setting>[_<tag>].json``.

``--setting quick`` passes ``quick=True`` to encoders whose ``__init__`` accepts it (their
preset for tests and the README); ``full`` uses the class defaults. ``--param k=v`` overrides
any constructor argument (values parsed as JSON when possible: ``epochs=5``, ``lr=1e-3``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "omniglot"


def parse_params(pairs: list[str]) -> dict:
    """['epochs=5', 'lr=1e-3', 'name=x'] -> {'epochs': 5, 'lr': 0.001, 'name': 'x'}."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--param {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def knn_scores(embeddings, labels) -> dict:
    """5-way 1-shot and 5-shot 1-NN accuracy (%, ci95) of test-split embeddings."""
    from cactus.evaluation.baselines import evaluate_embedding

    out = {}
    for shots in (1, 5):
        result = evaluate_embedding(embeddings, labels, "knn", ways=5, shots=shots, queries=5, n_tasks=1000, seed=0)
        out[f"5way{shots}shot"] = {"accuracy": round(result["accuracy"], 2), "ci95": round(result["ci95"], 2)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--setting", choices=("quick", "full"), default="quick")
    parser.add_argument("--param", action="append", default=[], metavar="K=V")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--tag", default="", help="suffix of the result file name (for experiments)")
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    args = parser.parse_args(argv)

    import torch

    from cactus.datasets.dataset import load_dataset
    from embeddings import encoder_class
    from embeddings.pca import PCAEncoder

    torch.set_num_threads(args.threads)
    ds = load_dataset(f"omniglot:{args.data}", image_size=28)
    train_images = ds.images[ds.indices(0)]
    test_rows = ds.indices(2)
    test_images = ds.images[test_rows]
    test_labels = ds.true_labels()[test_rows]

    cls = encoder_class(args.method)
    params = parse_params(args.param)
    accepted = inspect.signature(cls.__init__).parameters
    if "quick" in accepted and "quick" not in params:
        params["quick"] = args.setting == "quick"
    if "threads" in accepted and "threads" not in params:
        params["threads"] = args.threads
    encoder = cls(**params)

    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    encoder.fit(train_images)
    fit_seconds = time.perf_counter() - start
    fit_cpu_seconds = time.process_time() - cpu_start
    load_after = os.getloadavg()[0]
    start = time.perf_counter()
    embeddings = encoder.transform(test_images)
    transform_seconds = time.perf_counter() - start
    scores = knn_scores(embeddings, test_labels)

    start = time.perf_counter()
    pca = PCAEncoder(dim=64).fit(train_images)
    pca_seconds = time.perf_counter() - start
    pca_scores = knn_scores(pca.transform(test_images), test_labels)

    result = {
        "method": args.method,
        "setting": args.setting,
        "params": encoder.get_params(),
        "train_images": len(train_images),
        "test_images": len(test_images),
        "embedding_dim": int(embeddings.shape[1]),
        "fit_seconds": round(fit_seconds, 1),
        # CPU time of this process: about the wall time the fit takes on idle cores at the same thread count
        "fit_cpu_seconds": round(fit_cpu_seconds, 1),
        "transform_seconds": round(transform_seconds, 2),
        "knn": scores,
        "pca_baseline": {"fit_seconds": round(pca_seconds, 1), "knn": pca_scores},
        "torch_threads": torch.get_num_threads(),
        # other jobs share the 2 cores: the 1-minute load average around the fit puts fit_seconds in context
        "load_average_before_after_fit": [round(load_before, 2), round(load_after, 2)],
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "loss_curve": [round(float(x), 4) for x in getattr(encoder, "losses_", [])],
        "command": "python bench/encoders.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(
        f"{args.method} ({args.setting}): fit {fit_seconds:.1f}s (cpu {fit_cpu_seconds:.1f}s), "
        f"dim {embeddings.shape[1]}, "
        f"knn 5w1s {scores['5way1shot']['accuracy']:.2f}% +- {scores['5way1shot']['ci95']:.2f}, "
        f"5w5s {scores['5way5shot']['accuracy']:.2f}% +- {scores['5way5shot']['ci95']:.2f} | "
        f"pca 5w1s {pca_scores['5way1shot']['accuracy']:.2f}%, 5w5s {pca_scores['5way5shot']['accuracy']:.2f}%"
    )
    if not args.no_save:
        suffix = f"_{args.tag}" if args.tag else ""
        path = ROOT / "bench" / "results" / f"encoder_{args.method}_{args.setting}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
