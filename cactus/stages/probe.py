"""A short timed probe of this machine's throughput for a time budget (:mod:`cactus.stages.planner`).

It trains the planned encoder for one epoch on a few batches of the real images and runs a few
ProtoNets meta-steps on pseudo-tasks of the planned shape (random images of the data, random
labels), each timed after a warm-up step. Nothing is written; it takes a few seconds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cactus.stages.planner import ENCODER_BATCH, Throughput


def measure(images: np.ndarray, values: dict[str, Any], device: str, threads: int | None, seed: int = 0,
            encoder_batches: int = 2, meta_steps: int = 5) -> Throughput:
    """Seconds per encoder image-epoch and per meta iteration for ``images`` (N, H, W, C) uint8.

    ``values``: the planned options (method, dim, algo, ways, shots, queries, meta_lr,
    init_from_encoder). The encoder's time includes its warm-up and the batch-norm pass, so it
    errs on the slow side, as a budget should. Each part starts with an untimed warm-up (the first
    steps of a torch process are several times slower); the meta time is the median of its steps,
    so one step stalled by another process on shared cores does not shrink the plan.
    """
    import torch

    from cactus.core.device import resolve_device
    from cactus.nets import images_to_tensor
    from embeddings import encoder_class

    torch_device = resolve_device(device, threads)
    rng = np.random.default_rng(seed)
    subset = images[rng.choice(len(images), min(len(images), encoder_batches * ENCODER_BATCH), replace=False)]
    encoder = None
    encoder_image = 0.0
    if values.get("epochs"):
        params = {"dim": values["dim"], "epochs": 1, "seed": seed}
        params.update({k: v for k, v in {"device": None if device == "auto" else device, "threads": threads}.items()
                       if v is not None})
        encoder_class(values["method"])(**params).fit(subset[: min(len(subset), 64)])  # warm-up
        encoder = encoder_class(values["method"])(**params)
        started = time.perf_counter()
        encoder.fit(subset)
        encoder_image = (time.perf_counter() - started) / len(subset)
    if values["algo"] != "protonets":
        return Throughput(encoder_image, _static_meta(images, values), measured=True)
    from cactus.learners.protonets import ProtoNets

    height, _, channels = images.shape[1:]
    ways, shots, queries = values["ways"], values["shots"], values["queries"]
    learner = ProtoNets(channels, height, ways, meta_lr=values["meta_lr"], device=torch_device, seed=seed,
                        encoder=encoder if values.get("init_from_encoder") else None)
    labels = torch.arange(ways, device=torch_device)

    def step() -> None:
        rows = rng.choice(len(images), ways * (shots + queries), replace=len(images) < ways * (shots + queries))
        x = images_to_tensor(torch.as_tensor(images[rows], device=torch_device))
        support, query = x[: ways * shots], x[ways * shots:]
        learner.meta_step(support[None], labels.repeat_interleave(shots)[None], query[None],
                          labels.repeat_interleave(queries)[None])

    step()  # warm-up
    seconds = []
    for _ in range(meta_steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return Throughput(encoder_image, float(np.median(seconds)), measured=True)


def _static_meta(images: np.ndarray, values: dict[str, Any]) -> float:
    from cactus.stages.planner import DataShape, static_throughput

    shape = DataShape(len(images), *images.shape[1:])
    return static_throughput(shape, values["ways"] * (values["shots"] + values["queries"])).meta_iteration
