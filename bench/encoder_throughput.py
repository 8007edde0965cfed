"""Training throughput (images/s) of a torch encoder on a dataset's meta-train images, for a few steps.

    python bench/encoder_throughput.py --data folder:~/.cache/cactus/data/miniimagenet --image-size 84 \\
        --method contrastive --images 1024 [--threads 2]

Fits the encoder (its default settings, one epoch) on ``--images`` meta-train images drawn with
seed 0 and prints two rates: images per second of the training steps alone (each step timed, the
first left out as warm-up) and of the whole epoch (for DeepCluster with its embedding pass, k-means
and batch-norm re-estimation). A few steps, not a full training: the figure for planning.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np

    import embeddings.train_utils as train_utils
    from cactus.datasets.dataset import load_dataset
    from embeddings import encoder_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--method", required=True, choices=["contrastive", "deepcluster", "acai", "bigan", "infogan"])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    kind, _, path = args.data.partition(":")
    data = load_dataset(f"{kind}:{Path(path).expanduser()}" if path else kind, image_size=args.image_size)
    train_rows = data.indices(0)
    rows = np.sort(np.random.default_rng(0).choice(train_rows, min(args.images, len(train_rows)), replace=False))
    images = data.images[rows]
    encoder = encoder_class(args.method)(epochs=1, seed=0, device="cpu", threads=args.threads)

    timings: list[tuple[int, float]] = []  # (batch size, seconds) of each step
    train_epochs = train_utils.train_epochs

    def timed_train_epochs(step, *positional, **keywords):
        def timed_step(indices):
            start = time.perf_counter()
            loss = step(indices)
            timings.append((len(indices), time.perf_counter() - start))
            return loss

        return train_epochs(timed_step, *positional, **keywords)

    train_utils.train_epochs = timed_train_epochs
    start = time.perf_counter()
    encoder.fit(images)
    total = time.perf_counter() - start
    steps = timings[1:] or timings
    rate = sum(n for n, _ in steps) / sum(s for _, s in steps)
    print(f"{args.method} {images.shape[1]}x{images.shape[2]}x{images.shape[3]}: {len(images)} images, "
          f"batch {encoder.batch_size}, {len(timings)} steps: training steps {rate:.1f} img/s, "
          f"whole epoch {len(images) / total:.1f} img/s ({args.threads} threads)")


if __name__ == "__main__":
    main()
