"""MAML task by task (channels-last, one task's graph at a time) against the folded batch, by net size.

    python bench/maml_per_task.py [--threads 2] [--rounds 6]

For each net and task shape: two ``cactus.learners.maml.MAML`` learners from the same seed, one forced
onto each path (``per_task=True`` / ``False``), the same random 8-task batch; a warm-up, then ``--rounds``
meta-steps of each, alternating, and the same for ``predict`` (50 first-order steps). Prints and writes
bench/results/maml_per_task.json: tasks/s of each path and their ratio, with the net's forward MFLOP per
image, which is what ``PER_TASK_FLOPS`` / ``PER_TASK_PREDICT_FLOPS`` in cactus/learners/maml.py are set from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name: channels, image side, filters, downsample, ways, shots, queries, inner steps (training), predict?
CONFIGS = {
    "conv4-32-stride-28-5w1s15q": (1, 28, 32, "stride", 5, 1, 15, 5, True),
    "conv4-32-stride-28-20w1s5q": (1, 28, 32, "stride", 20, 1, 5, 5, False),
    "conv4-32-pool-28-5w1s15q": (1, 28, 32, "pool", 5, 1, 15, 5, False),
    "conv4-32-pool-42rgb-5w1s5q": (3, 42, 32, "pool", 5, 1, 5, 5, True),
    "conv4-32-pool-42rgb-5w5s5q": (3, 42, 32, "pool", 5, 5, 5, 5, True),
    "conv4-64-pool-28-5w1s15q-5step": (1, 28, 64, "pool", 5, 1, 15, 5, False),
    "conv4-64-pool-28-5w1s15q-1step": (1, 28, 64, "pool", 5, 1, 15, 1, False),
}
TASKS = 8
PREDICT_STEPS = 50


def alternate(calls: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each call, the calls alternating (order flipped every round)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            start = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def race(name: str, rounds: int) -> dict:
    import torch

    from cactus.learners.maml import MAML
    from cactus.nets import forward_flops

    channels, side, filters, downsample, ways, shots, queries, steps, predict = CONFIGS[name]
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(TASKS, ways * shots, channels, side, side, generator=g)
    qx = torch.rand(TASKS, ways * queries, channels, side, side, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(TASKS, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(TASKS, -1)
    learners = {p: MAML(channels, side, ways, filters=filters, downsample=downsample, inner_steps=steps,
                        test_inner_steps=PREDICT_STEPS, per_task=p, seed=0) for p in (False, True)}
    row = {"mflop_per_image": forward_flops(learners[True].net, channels, side) / 1e6}
    for learner in learners.values():
        learner.meta_step(sx, sy, qx, qy)
    seconds = alternate({p: (lambda p=p: learners[p].meta_step(sx, sy, qx, qy)) for p in (False, True)}, rounds)
    row.update({"train_folded_tasks_s": TASKS / seconds[False], "train_per_task_tasks_s": TASKS / seconds[True],
                "train_ratio": seconds[False] / seconds[True]})
    if predict:
        predicts = {p: (lambda p=p: learners[p].predict(sx, sy, qx)) for p in (False, True)}
        seconds = alternate(predicts, max(2, rounds // 2))
        row.update({"predict_folded_tasks_s": TASKS / seconds[False], "predict_per_task_tasks_s": TASKS / seconds[True],
                    "predict_ratio": seconds[False] / seconds[True]})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "maml_per_task.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = {}
    for name in args.configs.split(","):
        rows[name] = race(name, args.rounds)
        print(json.dumps({name: {k: round(v, 2) for k, v in rows[name].items()}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                    "threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
