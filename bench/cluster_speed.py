"""Clustering speed: our faiss k-means partitions against scikit-learn's KMeans as CACTUs used it.

P partitions of k clusters on the Omniglot meta-train embedding (PCA, 64-d by default), partition 0 on
the raw embedding and the others rescaled per dimension, exactly as `cactus cluster` does. Both sides
cluster the same scaled embeddings; scikit-learn with k-means++ and one init per partition (the
CACTUs code's setting). Prints and writes bench/results/cluster_speed.json: times, their ratio,
and the mean inertia ratio (ours / scikit-learn).

scikit-learn needs seconds per partition here, so by default it runs on the first
``--sklearn-partitions`` of the P partitions (the same ones ours computes); the time ratio is per
partition over those, and ours is also timed on all P. Ours runs a fixed number of Lloyd
iterations (``cactus cluster --iterations``, default 20); ``--ours-iterations 20,10`` times each
count on the same partitions, so the speed / inertia trade-off shows in one run.

    python bench/cluster_speed.py --partitions 100 --clusters 500 --sklearn-partitions 10 --ours-iterations 20,10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sklearn-partitions", type=int, default=10, help="partitions scikit-learn also computes")
    parser.add_argument("--ours-iterations", default="20,10", help="comma-separated k-means iteration counts")
    parser.add_argument("--threads", type=int, default=None, help="threads for both sides [all cores]")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster_speed.json")
    args = parser.parse_args()

    import faiss
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    from cactus.cluster import KMeans, partition_scales
    from cactus.data import load_dataset
    from embeddings.pca import PCAEncoder

    threads = args.threads or os.cpu_count()
    faiss.omp_set_num_threads(threads)
    dataset = load_dataset(f"omniglot:{OMNIGLOT}")
    train = dataset.images[dataset.indices(0)]
    embeddings = PCAEncoder(dim=args.dim).fit(train).transform(train)
    counts = [int(c) for c in args.ours_iterations.split(",")]
    ours_times: dict[int, list[float]] = {c: [] for c in counts}
    inertia_ratios: dict[int, list[float]] = {c: [] for c in counts}
    theirs_times, theirs_iterations = [], []
    for p in range(args.partitions):
        scaled = np.ascontiguousarray(embeddings * partition_scales(0, p, embeddings.shape[1]), dtype=np.float32)
        ours = {}
        for count in counts:
            start = time.perf_counter()
            ours[count] = KMeans(args.clusters, n_iter=count, random_state=p).fit(scaled)
            ours_times[count].append(time.perf_counter() - start)
        if p >= args.sklearn_partitions:
            continue
        start = time.perf_counter()
        with threadpool_limits(threads):
            theirs = SkKMeans(args.clusters, init="k-means++", n_init=1, random_state=p).fit(scaled)
        theirs_times.append(time.perf_counter() - start)
        theirs_iterations.append(int(theirs.n_iter_))
        for count in counts:
            inertia_ratios[count].append(ours[count].inertia_ / theirs.inertia_)
        print(f"partition {p}: scikit-learn {theirs_times[-1]:.2f} s ({theirs.n_iter_} iterations); "
              + "; ".join(f"ours {c} it {ours_times[c][-1]:.2f} s, inertia ratio {inertia_ratios[c][-1]:.4f}"
                          for c in counts), flush=True)
    both = len(theirs_times)
    theirs_per_partition = sum(theirs_times) / both
    result = {
        "benchmark": "cluster_speed",
        "date": time.strftime("%Y-%m-%d"),
        "data": f"Omniglot meta-train, {len(embeddings)} x {embeddings.shape[1]} PCA embedding",
        "partitions": args.partitions, "clusters": args.clusters, "threads": threads,
        "sklearn_partitions": both,
        "sklearn_seconds_per_partition": round(theirs_per_partition, 3),
        "sklearn_mean_iterations": round(float(np.mean(theirs_iterations)), 1),
        "ours": {
            str(c): {
                "iterations": c,
                "seconds_all_partitions": round(sum(ours_times[c]), 2),
                "seconds_per_partition": round(sum(ours_times[c][:both]) / both, 3),
                "speedup": round(sum(theirs_times) / sum(ours_times[c][:both]), 2),
                "mean_inertia_ratio": round(float(np.mean(inertia_ratios[c])), 5),
                "max_inertia_ratio": round(float(np.max(inertia_ratios[c])), 5),
            }
            for c in counts
        },
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "command": f"python bench/cluster_speed.py --partitions {args.partitions} --clusters {args.clusters} "
                   f"--sklearn-partitions {args.sklearn_partitions} --ours-iterations {args.ours_iterations}"
                   + (f" --threads {args.threads}" if args.threads else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
