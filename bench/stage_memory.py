"""Peak memory (resident set) of every pipeline stage, each its own `cactus` process, at one image size.

    python bench/stage_memory.py --data folder:~/.cache/cactus/data/miniimagenet --image-size 84 \\
        --embeddings runs/default_recipe/folder-miniimagenet-default/embeddings.h5

Each stage runs as a user would run it; the peak is the process's own ``ru_maxrss`` (``os.wait4``).
Memory does not grow with epochs or iterations, so the training stages run short: the encoders are
stopped with SIGTERM (their checkpoint-and-exit path) after ``--train-seconds`` of training, the
meta-learners run a few iterations on true-label tasks (``--tasks-from labels``, no partitions
needed), and the learners are scored on few tasks (each scoring chunk is the same size however many
tasks there are). The raw-pixel floor (embed + 1-NN at 1/5/20/50 shots, 1000 tasks) runs in full.
Clustering never sees pixels, so it runs on ``--embeddings`` (any embed artifact of the dataset).
Rows merge into bench/results/stage_memory.json keyed by data and image size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "stage_memory.json"
SHOTS = ["--ways", "5", "--shots", "1,5,20,50", "--queries", "15"]


def measure(name: str, args: list[str], stop_after: float | None = None, log: Path | None = None) -> dict:
    """Run ``cactus ARGS``; returns its wall time, peak RSS (GB) and whether it was stopped early."""
    print(f"$ cactus {' '.join(args)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with open(log or os.devnull, "a") as err:
        process = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=err)
        stopped = False
        if stop_after is not None:
            try:
                process.wait(timeout=stop_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)  # the encoders checkpoint and exit
                stopped = True
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not stopped:
        raise SystemExit(f"stage {name} failed with exit code {code}: cactus {' '.join(args)}")
    row = {"stage": name, "command": "cactus " + " ".join(args), "seconds": round(time.monotonic() - started, 1),
           "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2), "stopped_after_s": stop_after if stopped else None}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--embeddings", required=True, help="an embed artifact of the dataset, for the cluster stage")
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "stage_memory"))
    parser.add_argument("--only", default=None, help="run only the stages whose name contains this text")
    args = parser.parse_args()

    out = Path(args.out_dir) / f"size{args.image_size}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stderr.log"
    data = ["--data", args.data, "--image-size", str(args.image_size)]
    labels = ["--tasks-from", "labels", *data, "--iterations", "10", "--num-tasks", "200", "--validation", "none"]
    stages = [  # (name, cactus arguments[, seconds before SIGTERM])
        ("embed: raw pixels (the floor)", ["embed", *data, "--method", "pixels", "-o", f"{out}/pixels.h5", "--force"]),
        ("evaluate: raw-pixel 1-NN, 1000 tasks", ["evaluate", f"{out}/pixels.h5", "--learner", "knn", *SHOTS,
                                                  "--num-tasks", "1000"]),
        ("embed: contrastive (training)", ["embed", *data, "--method", "contrastive", "--dim", "128",
                                           "-o", f"{out}/contrastive.h5", "--force"], args.train_seconds),
        ("embed: deepcluster 256-d (training)", ["embed", *data, "--method", "deepcluster", "--dim", "256",
                                                 "-o", f"{out}/deepcluster.h5", "--force"], 2 * args.train_seconds),
        ("cluster: k 500, P 100", ["cluster", args.embeddings, "-k", "500", "-p", "100",
                                   "-o", f"{out}/partitions.h5", "--force"]),
        ("tasks", ["tasks", f"{out}/partitions.h5", "-n", "20", "-k", "1", "-q", "15", "-o", f"{out}/tasks.h5",
                   "--force"]),
        ("meta: ProtoNets conv4-64, 20-way 1-shot 15q", ["meta", *labels, "--algo", "protonets", "-n", "20", "-k",
                                                          "1", "-q", "15", "-o", f"{out}/protonets.h5", "--force"]),
        ("meta: MAML conv4-32 pool, 5-way 1-shot 5q, batch 8", [
            "meta", *labels, "--algo", "maml", "--filters", "32", "--downsample", "pool", "-n", "5", "-k", "1",
            "-q", "5", "--meta-batch", "8", "-o", f"{out}/maml.h5", "--force"]),
        ("evaluate: ProtoNets", ["evaluate", f"{out}/protonets.h5", *SHOTS, "--num-tasks", "100"]),
        ("evaluate: MAML, 50 steps", ["evaluate", f"{out}/maml.h5", *SHOTS, "--num-tasks", "10"]),
    ]
    rows = [measure(*stage, log=log) for stage in stages if args.only is None or args.only in stage[0]]
    for row in rows:
        row.update(date=time.strftime("%Y-%m-%d %H:%M"), load_average=[round(x, 1) for x in os.getloadavg()])
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = results.setdefault(f"{args.data} @ {args.image_size}", {"stages": []})
    measured = {row["stage"] for row in rows}  # a stage measured again replaces its row
    entry["stages"] = [r for r in entry["stages"] if r["stage"] not in measured] + rows
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"peak over these stages: {max(r['peak_rss_gb'] for r in rows)} GB", flush=True)


if __name__ == "__main__":
    main()
