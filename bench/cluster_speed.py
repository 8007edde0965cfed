"""Clustering speed: our faiss k-means partitions against scikit-learn's KMeans as CACTUs used it.

P partitions of k clusters on the Omniglot meta-train embedding (PCA, 64-d by default), partition 0 on
the raw embedding and the others rescaled per dimension, exactly as `cactus cluster` does. Both sides
cluster the same scaled embeddings; scikit-learn with k-means++ and one init per partition (the
CACTUs code's setting). Prints and writes bench/results/cluster_speed.json: times, their ratio,
and the mean inertia ratio (ours / scikit-learn).

scikit-learn needs minutes per partition here, so by default it runs on the first
``--sklearn-partitions`` of the P partitions (the same ones ours computes); the time ratio is per
partition over those, and ours is also timed on all P.

    python bench/cluster_speed.py --partitions 100 --clusters 500 --sklearn-partitions 5
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
    parser.add_argument("--sklearn-partitions", type=int, default=5, help="partitions scikit-learn also computes")
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
    ours_times, theirs_times, ratios = [], [], []
    for p in range(args.partitions):
        scaled = embeddings * partition_scales(0, p, embeddings.shape[1])
        start = time.perf_counter()
        ours = KMeans(args.clusters, n_iter=20, random_state=p).fit(scaled)
        ours_times.append(time.perf_counter() - start)
        if p >= args.sklearn_partitions:
            continue
        start = time.perf_counter()
        with threadpool_limits(threads):
            theirs = SkKMeans(args.clusters, init="k-means++", n_init=1, random_state=p).fit(scaled)
        theirs_times.append(time.perf_counter() - start)
        ratios.append(ours.inertia_ / theirs.inertia_)
        print(f"partition {p}: ours {ours_times[-1]:.1f} s, scikit-learn {theirs_times[-1]:.1f} s; "
              f"inertia ratio {ratios[-1]:.4f}", flush=True)
    both = len(theirs_times)
    result = {
        "benchmark": "cluster_speed",
        "date": time.strftime("%Y-%m-%d"),
        "data": f"Omniglot meta-train, {len(embeddings)} x {embeddings.shape[1]} PCA embedding",
        "partitions": args.partitions, "clusters": args.clusters, "threads": threads,
        "sklearn_partitions": both,
        "ours_seconds_all_partitions": round(sum(ours_times), 2),
        "ours_seconds_per_partition": round(sum(ours_times[:both]) / both, 3),
        "sklearn_seconds_per_partition": round(sum(theirs_times) / both, 3),
        "speedup": round(sum(theirs_times) / sum(ours_times[:both]), 2),
        "mean_inertia_ratio": round(float(np.mean(ratios)), 5),
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "command": f"python bench/cluster_speed.py --partitions {args.partitions} --clusters {args.clusters} "
                   f"--sklearn-partitions {args.sklearn_partitions}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
