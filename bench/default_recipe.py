"""The default recipe (issue 16): `cactus run --data X` with no other option, on every dataset at hand.

For each dataset it runs the planned pipeline end to end from nothing (``--force``), timed as a
whole process, and records the learner's accuracy at 5-way and the widest way the test classes
allow, 1 and 5 shots (1000 tasks, 5 queries), beside the two floors every run prints (1-NN on
the run's embedding, 1-NN on raw pixels), the plan and the load average. Results merge into
bench/results/default_recipe.json (one row per dataset and budget; a new run replaces its row).

    python bench/default_recipe.py --data digits omniglot:/work/shared/data/omniglot
    python bench/default_recipe.py --data omniglot:/work/shared/data/omniglot --budget 20m
    python bench/default_recipe.py --data folder:~/.cache/cactus/data/miniimagenet --extra=--image-size=28
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "default_recipe.json"


def run(data: str, budget: str | None, extra: list[str]) -> dict:
    """One `cactus run --data DATA [--budget B] --force --json`, timed; returns its row."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.split(":")[0] + ("-" + Path(data.split(":", 1)[1]).name
                                                                  if ":" in data else ""))
    out_dir = REPO / "runs" / "default_recipe" / f"{name}-{budget or 'default'}{''.join(extra).replace('-', '_')}"
    args = ["run", "--data", data, *(["--budget", budget] if budget else []), *extra, "--out-dir", str(out_dir),
            "--force", "--json"]
    print("$ cactus " + " ".join(args), file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
    wall = time.monotonic() - started
    # the largest resident set of any finished child: this run's peak (an upper bound for each of its stages)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if done.returncode != 0:
        raise SystemExit(f"cactus {' '.join(args)} failed with exit code {done.returncode}")
    summary = json.loads(done.stdout)
    learner, knn = summary["evaluation"]
    return {"data": data, "budget": budget or "cpu (default)", "extra": extra,
            "command": "cactus " + " ".join(args[: args.index("--out-dir")]),
            "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_gb, 2), "plan": summary.get("plan"),
            "threads": summary.get("threads"),
            "device": summary.get("device"), "stages": {s["stage"]: s["seconds"] for s in summary["stages"]},
            "learner": learner["learner"], "accuracy": scores(learner), "embedding_knn": scores(knn),
            "pixels_knn": scores(summary["floors"]["pixels_knn"]),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def scores(report: dict) -> dict[str, list[float]]:
    """{"5w1s": [accuracy, ci95], ...}."""
    return {f"{r['ways']}w{r['shots']}s": [r["accuracy"], r["ci95"]] for r in report.get("results", [])}


def save(row: dict) -> None:
    """Merge ``row`` into RESULTS (replacing the row of the same data, budget and extra options)."""
    from_file = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "default_recipe", "rows": []}
    same = (row["data"], row["budget"], row["extra"])
    from_file["rows"] = [r for r in from_file["rows"] if (r["data"], r["budget"], r["extra"]) != same] + [row]
    from cactus.core.atomic import write_text

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS, json.dumps(from_file, indent=2) + "\n", "JSON")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits"])
    parser.add_argument("--budget", default=None, help="a --budget for every run [the default, cpu]")
    parser.add_argument("--extra", action="append", default=[], help="one more cactus run argument, e.g. "
                        "--extra=--image-size=28")
    args = parser.parse_args()
    for data in args.data:
        row = run(data, args.budget, args.extra)
        save(row)
        print(json.dumps({k: row[k] for k in ("data", "budget", "wall_seconds", "accuracy", "embedding_knn",
                                               "pixels_knn")}), flush=True)


if __name__ == "__main__":
    main()
