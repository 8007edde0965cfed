"""cactus against learn2learn 0.2.0, in one process: meta-training tasks/s and peak memory of MAML and ProtoNets.

    python bench/side_by_side.py --peer /work/l2l [--rounds 24] [--configs a,b] [--profile]

``--peer``: the learn2learn peer built by ``bash ../shared/peers/learn2learn/setup.sh DIR`` (DIR, or its
``venv/bin/python``; default: the ``CACTUS_L2L_PEER`` environment variable). The script then re-runs
itself under that interpreter with this checkout on ``PYTHONPATH`` (cactus's learners need only torch
and numpy). Without a peer, and with no learn2learn importable, it says so and exits 0 (nothing written).

The race, per configuration: the same conv4 (:class:`cactus.nets.ConvNet`, batch norm without running
statistics) built from the same seed for both sides, the same random N(0, 1) 28x28 single-channel tasks
(4 meta-batches, cycled), meta-batch 8, Adam at 1e-3, second-order MAML at inner lr 0.05. learn2learn
runs its documented loop (``MAML.clone()``/``adapt()`` per task, each task's query loss / 8 back-propagated
before the next; ``PrototypicalClassifier`` per task); cactus runs ``MAML.meta_step`` / ``ProtoNets.meta_step``
as ``cactus meta`` does. Two warm-up meta-steps each, then ``--rounds`` rounds of one meta-step of each side,
the order alternating, so that load on this shared machine hits both alike; the ratio is learn2learn's
total time over cactus's for the same tasks. Peak memory: each side alone in a fresh subprocess (both
libraries imported in each, so the baselines match; 4 meta-steps), its VmHWM; ``base_mb`` is the RSS once
the net and data are built.

FLOPs (``gflop_per_step``): convolutions and linear layers only, 2 per multiply-add, per meta-step of 8
tasks, counted from the net's layer shapes. F(n) = forward FLOPs of n images; a backward pass costs 2 F
(gradients of inputs and weights). ProtoNets: 3 F(support + query). MAML, per task and inner step:
forward + backward on the support set (3 F(s)); second order, the meta-gradient differentiates that
step's backward graph too, which is itself forward-shaped work twice over (6 F(s)); so 9 F(s) per step
(3 F(s) first order), plus 3 F(q) for the query set. This is the algorithm's count, the same for both
sides; GFLOP/s = that count x tasks/s / 8. The run starts by timing a 4096^2 float32 ``torch.mm`` on the
threads used (best of 5): the ceiling both sides are measured against (on a loaded machine it reads low).

``--profile``: also a torch.profiler table of cactus's meta-step per configuration (top ops by self CPU
time), written beside the JSON. Writes bench/results/side_by_side.json (``--out`` to change) after every
configuration, ``"complete": true`` once all are done.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
META_BATCH = 8
SIDES = ("l2l", "cactus")
CONFIGS = {
    # name: (ways, shots, queries, filters, downsample, inner steps; 0 = ProtoNets)
    "maml-conv4-32-stride-5w1s-5step": (5, 1, 15, 32, "stride", 5),
    "maml-conv4-32-stride-20w1s-5step": (20, 1, 5, 32, "stride", 5),
    "maml-conv4-64-pool-5w1s-1step": (5, 1, 15, 64, "pool", 1),
    "maml-conv4-64-pool-5w1s-5step": (5, 1, 15, 64, "pool", 5),
    "protonets-conv4-64-pool-5w1s": (5, 1, 15, 64, "pool", 0),
    "protonets-conv4-64-pool-20w1s": (20, 1, 15, 64, "pool", 0),
}


def peer_python(peer: str | None) -> str | None:
    """The peer venv's interpreter from ``--peer`` (a setup.sh DIR or a python), or None."""
    if not peer:
        return None
    path = Path(peer)
    if path.is_dir():
        path = path / "venv" / "bin" / "python"
    if not path.exists():
        raise SystemExit(f"--peer {peer}: no learn2learn venv python there (build it with setup.sh DIR)")
    return str(path)


def import_learn2learn():
    """learn2learn (it prints gym/torchvision warnings on import: silenced)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import learn2learn
    return learn2learn


def random_tasks(ways: int, shots: int, queries: int, count: int = 4, seed: int = 0) -> list[tuple]:
    """``count`` meta-batches: support_x (8, N*K, 1, 28, 28), support_y (8, N*K), query_x, query_y, class-major."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        support_x = torch.randn(META_BATCH, ways * shots, 1, 28, 28, generator=g)
        query_x = torch.randn(META_BATCH, ways * queries, 1, 28, 28, generator=g)
        support_y = torch.arange(ways).repeat_interleave(shots).expand(META_BATCH, -1).contiguous()
        query_y = torch.arange(ways).repeat_interleave(queries).expand(META_BATCH, -1).contiguous()
        out.append((support_x, support_y, query_x, query_y))
    return out


def l2l_side(name: str):
    """learn2learn's meta-step for a configuration, as its documentation writes the loop."""
    import torch
    from torch.nn import functional as F

    from cactus.nets import ConvNet

    lib = import_learn2learn()
    ways, _, _, filters, downsample, steps = CONFIGS[name]
    torch.manual_seed(0)
    if steps:
        maml = lib.algorithms.MAML(ConvNet(1, 28, filters, ways, downsample), lr=0.05, first_order=False)
        optimiser = torch.optim.Adam(maml.parameters(), lr=1e-3)

        def maml_step(support_x, support_y, query_x, query_y):
            optimiser.zero_grad()
            for t in range(META_BATCH):
                learner = maml.clone()
                for _ in range(steps):
                    learner.adapt(F.cross_entropy(learner(support_x[t]), support_y[t]))
                (F.cross_entropy(learner(query_x[t]), query_y[t]) / META_BATCH).backward()
            optimiser.step()

        return maml_step
    net = ConvNet(1, 28, filters, None, downsample)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)

    def proto_step(support_x, support_y, query_x, query_y):
        optimiser.zero_grad()
        for t in range(META_BATCH):
            classifier = lib.nn.PrototypicalClassifier(support=net(support_x[t]), labels=support_y[t])
            (F.cross_entropy(classifier(net(query_x[t])), query_y[t]) / META_BATCH).backward()
        optimiser.step()

    return proto_step


def cactus_side(name: str, options: dict):
    """cactus's meta-step for a configuration (``options``: extra learner keyword arguments)."""
    ways, _, _, filters, downsample, steps = CONFIGS[name]
    if steps:
        from cactus.learners.maml import MAML

        learner = MAML(1, 28, ways, filters=filters, downsample=downsample, inner_steps=steps, inner_lr=0.05,
                       meta_lr=1e-3, seed=0, **options)
    else:
        from cactus.learners.protonets import ProtoNets

        learner = ProtoNets(1, 28, ways, filters=filters, downsample=downsample, meta_lr=1e-3, seed=0, **options)
    return learner.meta_step


def forward_flops(filters: int, downsample: str, ways: int | None) -> int:
    """Conv + linear FLOPs (2 per multiply-add) of one 28x28x1 image through the conv4 (and head)."""
    from cactus import nets

    return nets.forward_flops(nets.ConvNet(1, 28, filters, ways, downsample), 1, 28)


def step_gflop(name: str) -> float:
    """The algorithm's conv + linear GFLOP per meta-step of 8 tasks (count in the module docstring)."""
    ways, shots, queries, filters, downsample, steps = CONFIGS[name]
    f = forward_flops(filters, downsample, ways if steps else None)
    support, query = ways * shots * f, ways * queries * f
    per_task = 9 * steps * support + 3 * query if steps else 3 * (support + query)
    return META_BATCH * per_task / 1e9


def gemm_peak(threads: int) -> float:
    """Best GFLOP/s of a 4096x4096 float32 torch.mm over 5 runs (after a warm-up)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096**3 / best / 1e9


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def alone(name: str, side: str, options: dict, threads: int) -> None:
    """Subprocess body: one side only, 4 meta-steps; prints {"peak_mb", "base_mb"}."""
    import torch

    torch.set_num_threads(threads)
    import_learn2learn()  # both sides pay for both imports, so their baselines match
    import cactus.learners.maml  # noqa: F401
    import cactus.learners.protonets  # noqa: F401

    step = l2l_side(name) if side == "l2l" else cactus_side(name, options)
    batches = random_tasks(*CONFIGS[name][:3])
    base = status_mb("VmRSS")
    for i in range(4):
        step(*batches[i % len(batches)])
    print(json.dumps({"peak_mb": status_mb("VmHWM"), "base_mb": base}))


def peak_memory(name: str, side: str, options: dict, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--alone", name, side, "--threads", str(threads),
           "--cactus-options", json.dumps(options)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {side} alone failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile(name: str, step, batches, out: Path) -> str:
    """torch.profiler table (top 15 ops by self CPU time) of 2 cactus meta-steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2):
            step(*batches[i])
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48)
    out.write_text(f"# {name}: cactus meta-step x2, torch.profiler, top ops by self CPU time\n{table}\n")
    return table


def race(name: str, rounds: int, options: dict, memory: bool, threads: int, profile_dir: Path | None) -> dict:
    """One configuration, both sides alternating in this process; returns its result row."""
    l2l_step, our_step = l2l_side(name), cactus_side(name, options)
    batches = random_tasks(*CONFIGS[name][:3])
    for i in range(2):
        l2l_step(*batches[i])
        our_step(*batches[i])
    total = dict.fromkeys(SIDES, 0.0)
    per_round = {side: [] for side in SIDES}
    order = [("l2l", l2l_step), ("cactus", our_step)]
    for r in range(rounds):
        for side, step in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            step(*batches[r % len(batches)])
            took = time.perf_counter() - t0
            total[side] += took
            per_round[side].append(took)
    tasks = rounds * META_BATCH
    gflop = step_gflop(name)
    row = {
        "config": name, "rounds": rounds, "threads": threads, "cactus_options": options,
        "l2l_tasks_s": tasks / total["l2l"], "cactus_tasks_s": tasks / total["cactus"],
        "ratio": total["l2l"] / total["cactus"], "gflop_per_step": gflop,
        "l2l_gflops": gflop * rounds / total["l2l"], "cactus_gflops": gflop * rounds / total["cactus"],
        # the ratio over each half of the rounds: how stable it is under this machine's load
        "ratio_halves": [sum(per_round["l2l"][h]) / sum(per_round["cactus"][h])
                         for h in (slice(0, rounds // 2), slice(rounds // 2, rounds))],
    }
    if memory:
        for side in SIDES:
            got = peak_memory(name, side, options, threads)
            row[f"{side}_peak_mb"], row[f"{side}_base_mb"] = got["peak_mb"], got["base_mb"]
    if profile_dir is not None:
        profile(name, our_step, batches, profile_dir / f"side_by_side_profile_{name}.txt")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", default=os.environ.get("CACTUS_L2L_PEER"),
                    help="learn2learn peer: setup.sh's DIR or its venv python")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cactus-options", default="{}", help="JSON: extra cactus learner keyword arguments")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "side_by_side.json")
    ap.add_argument("--alone", nargs=2, metavar=("CONFIG", "SIDE"), help=argparse.SUPPRESS)
    ap.add_argument("--in-peer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    options = json.loads(args.cactus_options)
    python = peer_python(args.peer) if not args.in_peer and not args.alone else None
    if python is not None and Path(python).absolute().parent.parent != Path(sys.prefix).absolute():  # another venv
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.run([python, __file__, *(argv if argv is not None else sys.argv[1:]), "--in-peer"],
                              env=env).returncode
    sys.path.insert(0, str(ROOT))
    if args.alone:
        alone(*args.alone, options, args.threads)
        return 0
    try:
        import_learn2learn()
    except ImportError as error:
        print(f"side_by_side: skipped, learn2learn is not importable ({error}); pass --peer DIR "
              "(built by ../shared/peers/learn2learn/setup.sh DIR)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    peak = gemm_peak(args.threads)
    print(json.dumps({"gemm_peak_gflops": round(peak, 1), "threads": args.threads}), flush=True)
    rows: list[dict] = []
    command = "python bench/side_by_side.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(complete: bool) -> None:
        """The results so far (after every row, so a run stopped early keeps its finished rows)."""
        from cactus.core.atomic import write_text

        result = {
            "command": command.replace(" --in-peer", ""), "complete": complete,
            "started_utc": started.isoformat(timespec="seconds"),
            "written_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "torch": torch.__version__,
            "learn2learn": import_learn2learn().__version__,
            "machine": platform.processor() or platform.machine(), "gemm_peak_gflops": peak, "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(result, indent=1) + "\n")

    for name in names:
        row = race(name, args.rounds, options, not args.no_memory, args.threads,
                   args.out.parent if args.profile else None)
        row["cactus_pct_of_peak"] = 100 * row["cactus_gflops"] / peak
        row["l2l_pct_of_peak"] = 100 * row["l2l_gflops"] / peak
        row["load_average"] = os.getloadavg()
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(complete=False)
    write(complete=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
