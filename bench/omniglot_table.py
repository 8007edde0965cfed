"""The CACTUs Omniglot table: paper numbers beside ours, with our wall-clock times.

Runs each chosen preset end to end with `cactus run --preset NAME --budget BUDGET` (timed as a
whole: embedding, clustering, tasks, meta-training, evaluation), evaluates the embedding
baselines on the same embedding (knn, linear, mlp, cluster matching) and, optionally, the
supervised oracle (`cactus meta --tasks-from labels`). Writes bench/results/omniglot.json and
the table between the markers in BENCHMARKS.md.

    python bench/omniglot_table.py --presets contrastive-protonets,cactus-omniglot --budget cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
PAPER = {
    "CACTUs-MAML, ACAI (paper)": [68.84, 87.78, 48.09, 73.36],
    "CACTUs-ProtoNets, ACAI (paper)": [68.12, 83.58, 47.75, 66.27],
    "supervised MAML oracle (paper)": [94.46, 98.83, None, None],
    "UMTRA (Khodadadeh et al., paper)": [83.80, 95.43, 74.25, 92.12],
}
BEGIN, END = "<!-- omniglot-table:begin -->", "<!-- omniglot-table:end -->"


def cactus(*args: str) -> dict:
    """Run the cactus CLI with --json and return its parsed output (stderr passes through)."""
    command = [sys.executable, "-c", "from cli import main; main()", *args, "--json"]
    print("$ cactus " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cactus {' '.join(args)} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


def scores(report: dict) -> list[dict | None]:
    by_setting = {(r["ways"], r["shots"]): r for r in report["results"]}
    return [by_setting.get(s) for s in SETTINGS]


def run_preset(name: str, budget: str, threads: int, baselines: bool) -> list[dict]:
    out_dir = REPO / "runs" / f"{name}-{budget}"
    started = time.monotonic()
    # --force: the wall clock is end to end, not whatever an earlier run left cached in out_dir
    summary = cactus("run", "--preset", name, "--budget", budget, "--data", "omniglot:../shared/data/omniglot",
                     "--out-dir", str(out_dir), "--threads", str(threads), "--force")
    wall = time.monotonic() - started
    learner, knn = summary["evaluation"]
    rows = [{"name": f"{name} ({learner['learner']}, --budget {budget})", "scores": scores(learner),
             "wall_seconds": round(wall, 1), "command": f"cactus run --preset {name} --budget {budget}",
             "stages": {s["stage"]: s["seconds"] for s in summary["stages"]}}]
    rows.append({"name": f"{name} embedding + 1-NN", "scores": scores(knn), "wall_seconds": None,
                 "command": f"cactus evaluate {out_dir}/embeddings.h5 --learner knn --ways 5,20 --shots 1,5"})
    if baselines:
        for learner_name in ("linear", "mlp"):
            report = cactus("evaluate", str(out_dir / "embeddings.h5"), "--learner", learner_name, "--ways", "5,20",
                            "--shots", "1,5", "--threads", str(threads))
            rows.append({"name": f"{name} embedding + {learner_name}", "scores": scores(report),
                         "wall_seconds": None, "command": f"cactus evaluate ... --learner {learner_name}"})
        report = cactus("evaluate", str(out_dir / "partitions.h5"), "--learner", "cluster-matching", "--embeddings",
                        str(out_dir / "embeddings.h5"), "--ways", "5,20", "--shots", "1,5")
        rows.append({"name": f"{name} cluster matching", "scores": scores(report), "wall_seconds": None,
                     "command": "cactus evaluate partitions.h5 --learner cluster-matching --embeddings ..."})
    return rows


def run_oracle(algo: str, iterations: int, threads: int) -> dict:
    out = REPO / "runs" / "oracle" / f"{algo}.h5"
    started = time.monotonic()
    cactus("meta", "--tasks-from", "labels", "--data", "omniglot:../shared/data/omniglot", "--algo", algo,
           "--ways", "5", "--shots", "1", "--queries", "5", "--num-tasks", str(max(1000, iterations * 8 + 100)),
           "--iterations", str(iterations), "--threads", str(threads), "-o", str(out))
    report = cactus("evaluate", str(out), "--ways", "5,20", "--shots", "1,5", "--threads", str(threads))
    return {"name": f"SUPERVISED {algo} oracle (true labels, {iterations} iterations)", "scores": scores(report),
            "wall_seconds": round(time.monotonic() - started, 1),
            "command": f"cactus meta --tasks-from labels --algo {algo} --iterations {iterations} ..."}


def markdown(rows: list[dict]) -> str:
    lines = ["| method | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | wall clock |",
             "|---|---|---|---|---|---|"]
    for name, numbers in PAPER.items():
        cells = [f"{n:.2f}" if n is not None else "" for n in numbers]
        lines.append(f"| {name} | {' | '.join(cells)} | |")
    for row in rows:
        cells = [f"{s['accuracy']:.2f} ± {s['ci95']:.2f}" if s else "" for s in row["scores"]]
        wall = f"{row['wall_seconds'] / 60:.1f} min" if row.get("wall_seconds") else ""
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="contrastive-protonets")
    parser.add_argument("--budget", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-baselines", action="store_true", help="skip linear / mlp / cluster matching")
    parser.add_argument("--oracle-iterations", type=int, default=0, help="also run the supervised oracle")
    args = parser.parse_args()
    rows: list[dict] = []
    for name in [p for p in args.presets.split(",") if p]:
        rows += run_preset(name, args.budget, args.threads, not args.no_baselines)
        write_results(rows)  # after every preset: an interrupted run keeps what it measured
    if args.oracle_iterations:
        rows.append(run_oracle("protonets", args.oracle_iterations, args.threads))
    print(write_results(rows))


def write_results(rows: list[dict]) -> str:
    """Write bench/results/omniglot.json and the table between the markers in BENCHMARKS.md; return it."""
    result = {"benchmark": "omniglot_table", "date": time.strftime("%Y-%m-%d"), "settings": SETTINGS,
              "paper": PAPER, "rows": rows, "load_average_at_end": os.getloadavg(),
              "command": "python bench/omniglot_table.py " + " ".join(sys.argv[1:])}
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "omniglot.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    benchmarks = REPO / "BENCHMARKS.md"
    text = benchmarks.read_text() if benchmarks.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]
        benchmarks.write_text(text)
    return table


if __name__ == "__main__":
    main()
