"""MAML meta-training speed and peak memory: batched (folded, vmap) against the per-task loop.

    python bench/maml_speed.py [--repeats 5] [--steps 3] [--threads 2] [--first-order]

Same net (conv4, 32 filters, stride-2 downsampling, 28x28x1 Omniglot, N-way head), same task
batches (meta-batch 8, 1-shot, drawn once from the Omniglot meta-train split and saved to a temp
file), 5 inner steps at lr 0.05, second order (first order with ``--first-order``, written to
bench/results/maml_speed_first_order.json), one Adam step per meta-step, in two settings:
5-way 1-shot with 15 queries per class and 20-way 1-shot with 5 queries per class. Variants:

- ``loop``: :func:`tests.reference_maml.maml_reference_meta_gradient` (one task at a time,
  differentiating through the unrolled inner loop, as learn2learn's ``clone()``/``adapt()``),
  gradients handed to Adam;
- ``vmap``: :func:`bench.maml_vmap.vmap_meta_gradient`, the per-task function mapped with
  ``torch.func.vmap``, gradients handed to Adam;
- ``folded``: ``cactus.learners.maml.MAML`` as ``cactus meta --algo maml`` runs it (the task axis
  folded into the conv groups, every inner loop at once, then the query sets scored 2 tasks at a
  time, the CPU default);
- ``folded_qall``: the same with all 8 query sets at once (``query_chunk=8``, the default on a GPU);
- ``folded_q1``: the same with ``query_chunk=1`` (every inner loop at once, then the query sets
  scored one task at a time: less memory);
- ``folded_c2``: ``task_chunk=2`` (the meta-batch run 2 tasks at a time, same gradient);
- ``folded_rc``: ``recompute=True`` (the inner loop run first without its graph, keeping each
  step's weights; the backward pass rebuilds one step's graph at a time; query sets 2 at a time),
  ``folded_rc_q1`` with ``query_chunk=1`` as well;
- ``shared_batch``: not MAML but the ceiling of what batching tasks can give on this machine: the
  same work as the loop's 8 tasks (same ops, same FLOPs) with the task axis simply dropped, every
  task's support images one batch of 8*N through the *shared* meta-weights (one plain conv per
  layer, batch norm over the whole batch), the query sets 2 tasks at a time as in ``folded``. Any
  batched MAML does at least this work with more structure (per-task weights, grouped convs), so
  its speed-up over the loop cannot exceed this one's by more than noise.

Each (variant, setting) runs in a fresh child process doing only that: one warm-up meta-step,
then ``--steps`` timed ones; its peak memory is the child's VmHWM, reset (``/proc/self/clear_refs``) once
the data and net are loaded, also given net of the RSS it had then. The machine is shared with other jobs, so every
(variant, setting) is run ``--repeats`` times, interleaved (with the order rotated) so that
load hits them alike, and the median is reported. Then, for the speed ratios, the loop and the
``--interleaved`` variants (default: ``folded`` and ``shared_batch``) run in one process, one
meta-step each in turn for ``--rounds`` rounds, so that the machine's drift (runs of one variant
spread by +-25% on this host) hits them alike. Every variant starts from the same weights and
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
VARIANTS = ("loop", "vmap", "folded", "folded_qall", "folded_q1", "folded_c2", "folded_rc", "folded_rc_q1",
            "shared_batch")
NOT_MAML = ("shared_batch",)  # a bound, not a meta-gradient: its losses are not compared
OWN_GRADIENT = ("loop", "vmap", "shared_batch")  # variants that run a ConvNet copy with their own gradient function
QUERY_CHUNK = {"folded_qall": META_BATCH, "folded_q1": 1, "folded_rc_q1": 1}


def make_batches(path: Path, n_batches: int) -> str:
    """Sample the task batches of both settings from Omniglot meta-train; save them as tensors."""
    import numpy as np
    import torch

    from cactus.datasets.dataset import load_dataset
    from cactus.nets import images_to_tensor
    from cactus.task_sampling import sample_tasks

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


def shared_batch_meta_gradient(
    net, support_x, support_y, query_x, query_y, steps: int, lr: float, first_order: bool, query_chunk: int = 2,
) -> tuple[float, dict]:
    """The ``shared_batch`` bound: MAML's work for a task batch with the task axis dropped.

    support_x (B, N*K, C, H, W) and query_x (B, N*Q, C, H, W) go through the shared weights as
    batches of B*N*K and query_chunk*N*Q images. Returns (mean query loss, name -> gradient).
    """
    import torch
    from torch.func import functional_call
    from torch.nn import functional as F

    params = dict(net.named_parameters())
    names = list(params)
    images, labels = support_x.flatten(0, 1), support_y.flatten()
    fast = dict(params)
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(net, fast, (images,)), labels)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
        fast = {n: fast[n] - lr * g for n, g in zip(names, grads, strict=True)}
    leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
    totals = [torch.zeros_like(w) for w in leaves.values()]
    batch, loss_sum = query_x.shape[0], 0.0
    for start in range(0, batch, query_chunk):
        part = slice(start, start + query_chunk)
        share = len(query_x[part]) / batch
        loss = F.cross_entropy(functional_call(net, leaves, (query_x[part].flatten(0, 1),)), query_y[part].flatten())
        for total, g in zip(totals, torch.autograd.grad(loss * share, [leaves[n] for n in names]), strict=True):
            total += g
        loss_sum += loss.item() * share
    if first_order:
        return loss_sum, dict(zip(names, totals, strict=True))
    grads = torch.autograd.grad([fast[n] for n in names], [params[n] for n in names], totals)
    return loss_sum, dict(zip(names, grads, strict=True))


def make_meta_step(variant: str, setting: str, data: dict, first_order: bool):
    """One variant's meta-step on the saved batches: a function of the batch index returning the loss."""
    import torch

    from bench.maml_vmap import vmap_meta_gradient, vmap_safe
    from cactus.learners.maml import MAML
    from cactus.nets import ConvNet
    from tests.reference_maml import maml_reference_meta_gradient

    ways = SETTINGS[setting][0]
    learner = MAML(1, 28, ways, filters=FILTERS, downsample="stride", inner_steps=INNER_STEPS,
                   inner_lr=INNER_LR, seed=0, first_order=first_order,
                   task_chunk=2 if variant == "folded_c2" else None,
                   query_chunk=QUERY_CHUNK.get(variant),
                   recompute=variant.startswith("folded_rc"))
    if variant in OWN_GRADIENT:  # a copy of the stock ConvNet, same initial weights, its own Adam
        net = ConvNet(1, 28, FILTERS, ways, "stride")
        net.load_state_dict(learner.net.state_dict())
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
        gradient = {"loop": maml_reference_meta_gradient, "vmap": vmap_meta_gradient,
                    "shared_batch": shared_batch_meta_gradient}[variant]
        if variant == "vmap":
            vmap_safe(net)  # batch norm written out: the fused one's second derivative is wrong under vmap
        del learner

    def meta_step(i: int) -> float:
        batch = [data[k][i % len(data[k])] for k in ("support_x", "support_y", "query_x", "query_y")]
        if variant not in OWN_GRADIENT:
            return learner.meta_step(*batch)["loss"]
        loss, grads = gradient(net, *batch, INNER_STEPS, INNER_LR, first_order)
        for name, p in net.named_parameters():
            p.grad = grads[name]
        optimiser.step()
        return loss

    return meta_step


def child(variant: str, setting: str, batches_path: str, steps: int, threads: int, first_order: bool) -> dict:
    """Run one variant alone: a warm-up meta-step, then ``steps`` timed ones. Returns timings and memory."""
    import torch

    torch.set_num_threads(threads)
    meta_step = make_meta_step(variant, setting, torch.load(batches_path, weights_only=True)[setting], first_order)
    rss_before = reset_peak_rss()
    losses = [meta_step(0)]
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        losses.append(meta_step(i))
        times.append(time.perf_counter() - start)
    return {"times_s": times, "losses": losses, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


def interleaved_child(variants: list[str], setting: str, batches_path: str, rounds: int, threads: int,
                      first_order: bool) -> dict:
    """All variants in one process, one meta-step each in turn (order rotated every round), so that
    the machine's drift hits them alike. Returns {variant: [seconds per meta-step, one per round]}."""
    import torch

    torch.set_num_threads(threads)
    data = torch.load(batches_path, weights_only=True)[setting]
    steps = {v: make_meta_step(v, setting, data, first_order) for v in variants}
    for step in steps.values():
        step(0)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            start = time.perf_counter()
            steps[variant](1 + r)
            times[variant].append(time.perf_counter() - start)
    return times


def run_child(variant: str, setting: str, batches: str, steps: int, threads: int, first_order: bool,
              flag: str = "--child") -> dict:
    command = [sys.executable, __file__, flag, variant, setting, batches, str(steps), str(threads),
               "first" if first_order else "second"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved_summary(times: dict[str, list[float]]) -> dict:
    """Per variant: median tasks/s and its ratio to the loop's, and the median of the per-round ratios."""
    loop = times["loop"]
    rows = {}
    for variant, seconds in times.items():
        rows[variant] = {
            "tasks_per_s_median": META_BATCH / statistics.median(seconds),
            "step_s_all": seconds,
            "speedup_vs_loop": statistics.median(loop) / statistics.median(seconds),
            "round_ratio_median": statistics.median(a / b for a, b in zip(loop, seconds, strict=True)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per child process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS) + " (loop is always run)")
    parser.add_argument("--first-order", action="store_true", help="time first-order MAML instead of second")
    parser.add_argument("--rounds", type=int, default=12,
                        help="meta-steps per variant in the interleaved run (0: skip it)")
    parser.add_argument("--interleaved", default="folded,shared_batch",
                        help="variants timed against the loop in one process, a meta-step each in turn")
    parser.add_argument("--out", type=Path, help="default: bench/results/maml_speed[_first_order].json")
    child_args = ("VARIANT", "SETTING", "BATCHES", "STEPS", "THREADS", "ORDER")
    parser.add_argument("--child", nargs=6, metavar=child_args)
    parser.add_argument("--interleaved-child", nargs=6, metavar=child_args)
    args = parser.parse_args()
    if args.child:
        variant, setting, batches, steps, threads, order = args.child
        print(json.dumps(child(variant, setting, batches, int(steps), int(threads), order == "first")))
        return
    if args.interleaved_child:
        variants, setting, batches, rounds, threads, order = args.interleaved_child
        print(json.dumps(interleaved_child(variants.split(","), setting, batches, int(rounds), int(threads),
                                           order == "first")))
        return
    maml_order = "first" if args.first_order else "second"
    out = args.out or ROOT / "bench" / "results" / f"maml_speed{'_first_order' if args.first_order else ''}.json"

    import torch

    chosen = ("loop",) + tuple(v for v in args.variants.split(",") if v and v != "loop")
    interleaved = ["loop"] + [v for v in args.interleaved.split(",") if v and v != "loop"]
    for option, names in (("--variants", chosen), ("--interleaved", interleaved)):
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
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
                    result = run_child(variant, setting, batches, args.steps, args.threads, args.first_order)
                    runs[setting][variant].append(result)
                    rate = META_BATCH * args.steps / sum(result["times_s"])
                    print(f"[{repeat + 1}/{args.repeats}] {setting:13s} {variant:15s} {rate:6.2f} tasks/s  "
                          f"peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        side_by_side = {}
        for setting in SETTINGS if args.rounds else ():
            times = run_child(",".join(interleaved), setting, batches, args.rounds, args.threads, args.first_order,
                              flag="--interleaved-child")
            side_by_side[setting] = interleaved_summary(times)
            print(f"interleaved {setting}: " + ", ".join(
                f"{v} {row['tasks_per_s_median']:.1f} tasks/s ({row['speedup_vs_loop']:.2f}x)"
                for v, row in side_by_side[setting].items()), file=sys.stderr, flush=True)

    summary: dict[str, dict] = {}
    for setting, by_variant in runs.items():
        first_losses = {v: r[0]["losses"][0] for v, r in by_variant.items() if v not in NOT_MAML}
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
        if setting in side_by_side:
            summary[setting]["interleaved"] = side_by_side[setting]

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
            "inner_steps": INNER_STEPS, "inner_lr": INNER_LR, "order": maml_order, "shots": 1,
            "tasks": source, "timed_meta_steps_per_child": args.steps, "repeats": args.repeats,
            "memory": "VmHWM of a fresh child process running only that variant, reset after loading",
            "interleaved": f"{args.rounds} meta-steps per variant in one process, in turn; speed-up = ratio of "
                           "median step times, and median of the per-round ratios",
        },
        "settings": summary,
        "wall_s": time.time() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"MAML meta-training, meta-batch {META_BATCH}, {INNER_STEPS} inner steps, {maml_order} order, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"{'setting':14s} {'variant':15s} {'tasks/s':>8s} {'x loop':>7s} {'peak MB':>8s} {'+MB':>6s}")
    for setting, entry in summary.items():
        for variant, row in entry["variants"].items():
            print(f"{setting:14s} {variant:15s} {row['tasks_per_s_median']:8.2f} "
                  f"{row.get('speedup_vs_loop', 1.0):7.2f} {row['peak_rss_mb_median']:8.0f} "
                  f"{row['peak_minus_start_rss_mb_median']:6.0f}")
    for setting, entry in summary.items():
        for variant, row in entry.get("interleaved", {}).items():
            if variant != "loop":
                print(f"{setting:14s} {variant:15s} interleaved with the loop, {args.rounds} steps each: "
                      f"{row['speedup_vs_loop']:.2f}x (per-round ratios: median {row['round_ratio_median']:.2f})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
