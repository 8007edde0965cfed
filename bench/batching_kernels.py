"""What batching 8 tasks buys at the kernel level: one op over 8 x n images against 8 ops over n.

    python bench/batching_kernels.py [--rounds 30] [--threads 2]

For the MAML net of bench/maml_speed.py (conv4, 32 filters, 3x3, stride 2, 28x28x1), the four conv
layers' forward + backward (input and weight gradients) with shared weights, summed over the layers,
and one elementwise product of the first layer's (n, 32, 14, 14) activations, at the batch sizes a
task has there: n = 5 and 75 (5-way 1-shot, 15 queries: support, query), n = 20 and 100 (20-way
1-shot, 5 queries). Each round times 8 calls on n images and 1 call on 8n images, alternately, so
the machine's drift hits both alike; the speed-up of batching is the ratio of their medians. Writes
bench/results/batching_kernels.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS, FILTERS = 8, 32
LAYERS = ((1, 28), (FILTERS, 14), (FILTERS, 7), (FILTERS, 4))  # (input channels, input side), stride 2
IMAGES_PER_TASK = {"5-way support": 5, "5-way query": 75, "20-way support": 20, "20-way query": 100}


def conv_pass(images: int):
    """A function running every layer's forward and backward on ``images`` images."""
    import torch
    from torch.nn import functional as F

    work = []
    for channels, side in LAYERS:
        x = torch.randn(images, channels, side, side, requires_grad=channels > 1)
        w = torch.randn(FILTERS, channels, 3, 3, requires_grad=True)
        grad_out = torch.randn_like(F.conv2d(x, w, None, 2, 1))
        work.append((x, w, grad_out))

    def run() -> None:
        for x, w, grad_out in work:
            out = F.conv2d(x, w, None, 2, 1)
            torch.autograd.grad(out, [x, w] if x.requires_grad else [w], grad_out)

    return run


def elementwise_pass(images: int):
    import torch

    a, b = torch.randn(images, FILTERS, 14, 14), torch.randn(images, FILTERS, 14, 14)
    return lambda: torch.mul(a, b)


def speedup(make, images: int, rounds: int) -> dict:
    """Median seconds of 8 calls on ``images`` and of 1 call on 8x ``images``; their ratio."""
    separate, batched = make(images), make(TASKS * images)
    for _ in range(3):
        separate(), batched()
    times: dict[str, list[float]] = {"separate": [], "batched": []}
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(TASKS):
            separate()
        times["separate"].append(time.perf_counter() - start)
        start = time.perf_counter()
        batched()
        times["batched"].append(time.perf_counter() - start)
    eight, one = statistics.median(times["separate"]), statistics.median(times["batched"])
    return {"8_separate_ms": eight * 1e3, "one_batched_ms": one * 1e3, "speedup": eight / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batching_kernels.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started, load_start = time.time(), os.getloadavg()
    rows = {}
    for name, images in IMAGES_PER_TASK.items():
        rows[name] = {
            "images_per_task": images,
            "conv_forward_backward": speedup(conv_pass, images, args.rounds),
            "elementwise_mul_14x14": speedup(elementwise_pass, images, args.rounds * 10),
        }
        conv, mul = rows[name]["conv_forward_backward"], rows[name]["elementwise_mul_14x14"]
        print(f"{name:15s} n={images:3d}: convs 8 x n {conv['8_separate_ms']:7.2f} ms, "
              f"8n {conv['one_batched_ms']:7.2f} ms -> {conv['speedup']:.2f}x; "
              f"mul {mul['8_separate_ms']:6.3f} vs {mul['one_batched_ms']:6.3f} ms"
              f" -> {mul['speedup']:.2f}x", flush=True)
    report = {
        "benchmark": "batching_kernels",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_start_end": [load_start, os.getloadavg()],
        "setup": "conv4 layers (32 filters, 3x3, stride 2, 28x28x1), shared weights; speedup = 8 calls on n / 1 on 8n",
        "rows": rows,
        "wall_s": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
