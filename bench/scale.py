"""Scale: `cactus cluster` with P partitions of k clusters on N x D float32 embeddings in HDF5.

Writes a synthetic embed artifact (a mixture of Gaussians, chunked and compressed HDF5, written chunk
by chunk so this script never holds it), then runs `cactus cluster` on it in a child process and
records the wall time and the child's peak resident memory (getrusage). When the stage streams,
k-means trains on k x 256 sampled rows, then labels every row chunk by chunk.

    python bench/scale.py                       # N = 1,000,000, D = 128, P = 10, k = 1000
    python bench/scale.py --rows 200000 --partitions 2 --out bench/results/scale_small.json
    CACTUS_STREAM_ABOVE_MB=256 python bench/scale.py --out bench/results/scale_streamed.json  # streamed path

The 1,000,000 x 128 float32 embeddings (488 MiB) are below the 1 GiB above which `cactus cluster`
streams, so the default run takes the in-memory path; the environment variable lowers the threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_embeddings(path: Path, rows: int, dim: int, centres: int, seed: int = 0, chunk: int = 65536) -> str:
    """A cactus embed artifact with /embeddings (rows, dim) float32 and /split (rows,) int8 (90% meta-train)."""
    import h5py

    from cactus import __version__
    from cactus.core.store import FORMAT, compute_key

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (centres, dim)).astype(np.float32)
    config = {"data": {"spec": f"synthetic:{rows}x{dim}"}, "encoder": {"method": "synthetic", "seed": seed}}
    key = compute_key("embed", config, [])
    partial = path.with_name(f".{path.name}.tmp")
    with h5py.File(partial, "w") as out:
        for name, value in {"format": FORMAT, "stage": "embed", "config": json.dumps(config, sort_keys=True),
                            "key": key, "inputs": "[]", "version": __version__,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}.items():
            out.attrs[name] = value
        data = out.create_dataset("embeddings", (rows, dim), dtype=np.float32, chunks=(min(chunk, rows) // 8, dim),
                                  compression="gzip", compression_opts=1, shuffle=True)
        split = out.create_dataset("split", (rows,), dtype=np.int8)
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            labels = rng.integers(0, centres, n)
            data[start : start + n] = means[labels] + rng.normal(0, 1, (n, dim)).astype(np.float32)
            split[start : start + n] = (rng.random(n) < 0.1).astype(np.int8) * 2
    os.replace(partial, path)
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=None, help="k-means iterations [cactus cluster's default]")
    parser.add_argument("--engine", default="relaxed", choices=["relaxed", "faiss"])
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of the clustering child")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cactus_scale"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    embed = args.work / f"embeddings_{args.rows}x{args.dim}.h5"
    if not embed.exists():
        started = time.monotonic()
        write_embeddings(embed, args.rows, args.dim, centres=2 * args.clusters)
        print(f"wrote {embed} ({embed.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    out = args.work / "partitions.h5"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "cli.py"), "cluster", str(embed), "-o", str(out), "-k", str(args.clusters),
               "-p", str(args.partitions), "--engine", args.engine, "--json"]
    if args.iterations:
        command[-1:-1] = ["--iterations", str(args.iterations)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.monotonic()
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if child.returncode != 0:
        sys.exit(f"cactus cluster failed:\n{child.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    summary = json.loads(child.stdout)
    result = {
        "rows": args.rows, "dim": args.dim, "partitions": args.partitions, "clusters": args.clusters,
        "iterations": args.iterations or "default", "engine": args.engine, "threads": args.threads,
        "meta_train_rows": summary["rows"],
        "seconds": round(seconds, 1), "seconds_per_partition": round(seconds / args.partitions, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1), "embeddings_file_mib": round(embed.stat().st_size / 2**20, 1),
        "kept_percent": summary["kept_percent"], "load_average_1min": os.getloadavg()[0],
        "streamed": "streamed from HDF5" in child.stderr,  # above CACTUS_STREAM_ABOVE_MB (1024) of embeddings
        "command": " ".join(["cactus", *command[2:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
