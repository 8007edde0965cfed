"""MAML meta-training speed and peak memory: batched (folded, vmap) against the per-task loop.

    python bench/maml_speed.py [--repeats 5] [--steps 3] [--threads 2]

Same net (conv4, 32 filters, stride-2 downsampling, 28x28x1 Omniglot, N-way head), same task
batches (meta-batch 8, 1-shot, drawn once from the Omniglot meta-train split and saved to a temp
file), 5 inner steps at lr 0.05, second order, one Adam step per meta-step, in two settings:
5-way 1-shot with 15 queries per class and 20-way 1-shot with 5 queries per class. Variants:

- ``loop``: :func:`cactus.meta.maml_reference.maml_reference_meta_gradient` (one task at a time,
  differentiating through the unrolled inner loop, as learn2learn's ``clone()``/``adapt()``),
  gradients handed to Adam;
- ``vmap``: ``MAML(batching="vmap")``, the per-task function mapped with ``torch.func.vmap``;
- ``folded``: ``MAML(batching="folded")`` (the default), the task axis folded into the conv groups,
  every inner loop at once, then the query sets scored 2 tasks at a time (the CPU default);
- ``folded_qall``: the same with all 8 query sets at once (``query_chunk=8``, the default on a GPU);
- ``folded_q1``: the same with ``query_chunk=1`` (every inner loop at once, then the query sets
  scored one task at a time: less memory);
- ``folded_c2``: ``task_chunk=2`` (the meta-batch run 2 tasks at a time, same gradient);
- ``folded_rc``: ``recompute=True`` (the inner loop run first without its graph, keeping each
  step's weights; the backward pass rebuilds one step's graph at a time; query sets 2 at a time),
  ``folded_rc_q1`` with ``query_chunk=1`` as well.

Each (variant, setting) runs in a fresh child process doing only that: one warm-up meta-step,
then ``--steps`` timed ones; its peak memory is the child's VmHWM, reset (``/proc/self/clear_refs``) once
the data and net are loaded, also given net of the RSS it had then. The machine is shared with other jobs, so every
(variant, setting) is run ``--repeats`` times, interleaved (with the order rotated) so that
load hits them alike, and the median is reported. Every variant starts from the same weights and
batch; the script checks that their first query losses agree. Writes bench/results/maml_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
SETTINGS = {"5way1shot15q": (5, 15), "20way1shot5q": (20, 5)}
META_BATCH, INNER_STEPS, INNER_LR, FILTERS = 8, 5, 0.05, 32
VARIANTS = ("loop", "vmap", "folded", "folded_qall", "folded_q1", "folded_c2", "folded_rc", "folded_rc_q1")
QUERY_CHUNK = {"folded_qall": META_BATCH, "folded_q1": 1, "folded_rc_q1": 1}


def make_batches(path: Path, n_batches: int) -> str:
    """Sample the task batches of both settings from Omniglot meta-train; save them as tensors."""
    import numpy as np
    import torch

    from cactus.data import load_dataset
    from cactus.meta.nets import images_to_tensor
    from cactus.tasks import sample_tasks

    if OMNIGLOT.exists():
        ds = load_dataset(f"omniglot:{OMNIGLOT}")
        rows = ds.indices(0)
        labels, images, source = ds.true_labels()[rows][None], ds.images, "omniglot meta-train split"
    else:  # same shapes, random pixels: the speed does not depend on the pixels
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (2000, 28, 28, 1), dtype=np.uint8)
        rows, labels, source = np.arange(2000), np.repeat(np.arange(100), 20)[None], "random pixels"
    out = {}
    for name, (ways, queries) in SETTINGS.items():
        tasks = sample_tasks(labels, rows, ways, 1, queries, META_BATCH * n_batches, seed=0, what="classes")
        shape = (n_batches, META_BATCH)
        out[name] = {
            "support_x": images_to_tensor(images[tasks.support]).reshape(*shape, ways, 1, 28, 28),
            "support_y": torch.as_tensor(tasks.support_labels()).expand(*shape, -1).clone(),
            "query_x": images_to_tensor(images[tasks.query]).reshape(*shape, ways * queries, 1, 28, 28),
            "query_y": torch.as_tensor(tasks.query_labels()).expand(*shape, -1).clone(),
        }
    torch.save(out, path)
    return source


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> float:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return that RSS in MB.

    ``ru_maxrss`` cannot be used: Linux carries it across fork+exec, so every child would report
    at least the parent's peak (the parent holds the decoded Omniglot).
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def child(variant: str, setting: str, batches_path: str, steps: int, threads: int) -> dict:
    """Run one variant alone: a warm-up meta-step, then ``steps`` timed ones. Returns timings and memory."""
    import torch

    torch.set_num_threads(threads)
    from cactus.meta.maml import MAML
    from cactus.meta.maml_reference import maml_reference_meta_gradient
    from cactus.meta.nets import ConvNet

    data = torch.load(batches_path, weights_only=True)[setting]
    ways = SETTINGS[setting][0]
    learner = MAML(1, 28, ways, filters=FILTERS, downsample="stride", inner_steps=INNER_STEPS,
                   inner_lr=INNER_LR, batching="vmap" if variant == "vmap" else "folded", seed=0,
                   task_chunk=2 if variant == "folded_c2" else None,
                   query_chunk=QUERY_CHUNK.get(variant),
                   recompute=variant.startswith("folded_rc"))
    if variant == "loop":  # the stock ConvNet (fused batch norm), same initial weights, its own Adam
        net = ConvNet(1, 28, FILTERS, ways, "stride")
        net.load_state_dict(learner.net.state_dict())
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
        del learner

    def meta_step(i: int) -> float:
        batch = [data[k][i % len(data[k])] for k in ("support_x", "support_y", "query_x", "query_y")]
        if variant != "loop":
            return learner.meta_step(*batch)["loss"]
        loss, grads = maml_reference_meta_gradient(net, *batch, INNER_STEPS, INNER_LR)
        for name, p in net.named_parameters():
            p.grad = grads[name]
        optimiser.step()
        return loss

    rss_before = reset_peak_rss()
    losses = [meta_step(0)]
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        losses.append(meta_step(i))
        times.append(time.perf_counter() - start)
    return {"times_s": times, "losses": losses, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


def run_child(variant: str, setting: str, batches: str, steps: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", variant, setting, batches, str(steps), str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per child process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS) + " (loop is always run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "maml_speed.json")
    parser.add_argument("--child", nargs=5, metavar=("VARIANT", "SETTING", "BATCHES", "STEPS", "THREADS"))
    args = parser.parse_args()
    if args.child:
        variant, setting, batches, steps, threads = args.child
        print(json.dumps(child(variant, setting, batches, int(steps), int(threads))))
        return

    import torch

    chosen = ("loop",) + tuple(v for v in args.variants.split(",") if v and v != "loop")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    started = time.time()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        batches = str(Path(tmp) / "batches.pt")
        source = make_batches(Path(batches), args.steps + 1)
        runs: dict[str, dict[str, list[dict]]] = {s: {v: [] for v in chosen} for s in SETTINGS}
        for repeat in range(args.repeats):
            for setting in SETTINGS:
                shift = repeat % len(chosen)
                order = chosen[shift:] + chosen[:shift]  # rotate who goes first
                for variant in order:
                    result = run_child(variant, setting, batches, args.steps, args.threads)
                    runs[setting][variant].append(result)
                    rate = META_BATCH * args.steps / sum(result["times_s"])
                    print(f"[{repeat + 1}/{args.repeats}] {setting:13s} {variant:15s} {rate:6.2f} tasks/s  "
                          f"peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)

    summary: dict[str, dict] = {}
    for setting, by_variant in runs.items():
        first_losses = {v: r[0]["losses"][0] for v, r in by_variant.items()}
        spread = max(first_losses.values()) - min(first_losses.values())
        rows = {}
        for variant, results in by_variant.items():
            rates = [META_BATCH * args.steps / sum(r["times_s"]) for r in results]
            rows[variant] = {
                "tasks_per_s_median": statistics.median(rates),
                "tasks_per_s_all": rates,
                "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in results),
                "peak_minus_start_rss_mb_median": statistics.median(
                    r["peak_rss_mb"] - r["rss_before_mb"] for r in results
                ),
            }
        loop = rows["loop"]
        for variant in chosen[1:]:
            rows[variant]["speedup_vs_loop"] = rows[variant]["tasks_per_s_median"] / loop["tasks_per_s_median"]
            rows[variant]["peak_rss_ratio_vs_loop"] = rows[variant]["peak_rss_mb_median"] / loop["peak_rss_mb_median"]
        summary[setting] = {"variants": rows, "first_step_query_loss": first_losses, "loss_spread": spread}

    report = {
        "benchmark": "maml_speed",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin briefly, then sleep)"),
        "load_average_start_end": [load_start, os.getloadavg()],
        "setup": {
            "net": f"conv4, {FILTERS} filters, stride, 28x28x1, N-way head", "meta_batch": META_BATCH,
            "inner_steps": INNER_STEPS, "inner_lr": INNER_LR, "order": "second", "shots": 1,
            "tasks": source, "timed_meta_steps_per_child": args.steps, "repeats": args.repeats,
            "memory": "VmHWM of a fresh child process running only that variant, reset after loading",
        },
        "settings": summary,
        "wall_s": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"MAML meta-training, meta-batch {META_BATCH}, {INNER_STEPS} inner steps, second order, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"{'setting':14s} {'variant':15s} {'tasks/s':>8s} {'x loop':>7s} {'peak MB':>8s} {'+MB':>6s}")
    for setting, entry in summary.items():
        for variant, row in entry["variants"].items():
            print(f"{setting:14s} {variant:15s} {row['tasks_per_s_median']:8.2f} "
                  f"{row.get('speedup_vs_loop', 1.0):7.2f} {row['peak_rss_mb_median']:8.0f} "
                  f"{row['peak_minus_start_rss_mb_median']:6.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
