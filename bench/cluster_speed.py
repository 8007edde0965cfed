"""Clustering speed: our k-means partitions against scikit-learn's KMeans as CACTUs used it.

P partitions of k clusters on the Omniglot meta-train embedding (PCA, 64-d by default), partition 0 on
the raw embedding and the others rescaled per dimension, exactly as `cactus cluster` does. Both sides
get the same CPU threads (``--threads``, default every available CPU). scikit-learn runs k-means++
with one init per partition (the CACTUs code's setting) to convergence; ours is the code path of
`cactus cluster`, :func:`cactus.clustering.partitions.partitions`, timed over all P partitions, for each engine and
iteration count asked for (``relaxed:8`` = over-relaxed Lloyd, 8 iterations, the default;
``faiss:20`` = faiss's Lloyd, the previous default). Prints and writes bench/results/cluster_speed.json
(or ``--out``): seconds per partition, the time ratio, and the inertia ratio ours / scikit-learn.

scikit-learn needs seconds per partition, so it runs on the first ``--sklearn-partitions`` partitions;
the inertia ratios compare ours and theirs on exactly those scaled embeddings. For a one-thread
comparison also set ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``: faiss's wheel bundles its own
OpenMP and OpenBLAS, which ``--threads`` alone may not hold to one thread.

    python bench/cluster_speed.py --partitions 100 --clusters 500 --sklearn-partitions 10
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
    parser.add_argument("--ours", default="relaxed:8,relaxed:6,relaxed:10,faiss:20",
                        help="comma-separated engine:iterations configurations of ours")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both sides [all available]")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster_speed.json")
    args = parser.parse_args()

    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    from cactus.clustering.partitions import KMeans, available_cpus, import_faiss, partition_scales, partitions
    from cactus.datasets.dataset import load_dataset
    from embeddings.pca import PCAEncoder

    threads = args.threads or available_cpus()
    faiss = import_faiss()
    faiss.omp_set_num_threads(threads)
    dataset = load_dataset(f"omniglot:{OMNIGLOT}")
    train = dataset.images[dataset.indices(0)]
    embeddings = PCAEncoder(dim=args.dim).fit(train).transform(train)
    configurations = [(engine, int(count)) for engine, count in (c.split(":") for c in args.ours.split(","))]
    both = min(args.sklearn_partitions, args.partitions)
    scaled = [np.ascontiguousarray(embeddings * partition_scales(0, p, args.dim), dtype=np.float32)
              for p in range(both)]

    theirs_times, theirs_inertia, theirs_iterations = [], [], []
    with threadpool_limits(threads):
        for p in range(both):
            start = time.perf_counter()
            fitted = SkKMeans(args.clusters, init="k-means++", n_init=1, random_state=p).fit(scaled[p])
            theirs_times.append(time.perf_counter() - start)
            theirs_inertia.append(fitted.inertia_)
            theirs_iterations.append(int(fitted.n_iter_))
            print(f"scikit-learn partition {p}: {theirs_times[-1]:.2f} s, {fitted.n_iter_} iterations", flush=True)
    theirs_per_partition = float(np.mean(theirs_times))

    ours = {}
    for engine, count in configurations:
        start = time.perf_counter()
        partitions(embeddings, range(args.partitions), args.clusters, seed=0, n_iter=count, engine=engine,
                   threads=threads)
        per_partition = (time.perf_counter() - start) / args.partitions
        ratios = [KMeans(args.clusters, n_iter=count, random_state=p, engine=engine).fit(scaled[p]).inertia_
                  / theirs_inertia[p] for p in range(both)]
        ours[f"{engine}:{count}"] = {
            "engine": engine, "iterations": count,
            "seconds_per_partition": round(per_partition, 4),
            "seconds_all_partitions": round(per_partition * args.partitions, 2),
            "speedup": round(theirs_per_partition / per_partition, 2),
            "mean_inertia_ratio": round(float(np.mean(ratios)), 5),
            "max_inertia_ratio": round(float(np.max(ratios)), 5),
        }
        print(f"ours {engine}:{count}: {per_partition:.3f} s per partition = "
              f"{theirs_per_partition / per_partition:.1f}x, inertia ratio {np.mean(ratios):.4f} "
              f"(max {np.max(ratios):.4f})", flush=True)

    result = {
        "benchmark": "cluster_speed",
        "date": time.strftime("%Y-%m-%d"),
        "data": f"Omniglot meta-train, {len(embeddings)} x {embeddings.shape[1]} PCA embedding",
        "partitions": args.partitions, "clusters": args.clusters, "threads": threads,
        "sklearn_partitions": both,
        "sklearn_seconds_per_partition": round(theirs_per_partition, 3),
        "sklearn_mean_iterations": round(float(np.mean(theirs_iterations)), 1),
        "ours": ours,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "command": f"python bench/cluster_speed.py --partitions {args.partitions} --clusters {args.clusters} "
                   f"--sklearn-partitions {args.sklearn_partitions} --ours {args.ours}"
                   + (f" --threads {args.threads}" if args.threads else "")
                   + (f" --out {args.out.relative_to(REPO)}" if args.out.is_relative_to(REPO) else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
