"""The default recipe of ``cactus run``: derived from the data's size and shape and a budget, never a name.

Pure and fast: :func:`plan` reads a :class:`DataShape` (meta-train images, height, width,
channels: no labels, so no class count), a :class:`Budget` (``quick``, ``cpu``, ``paper`` or
seconds of wall clock, given or read from ``SLURM_JOB_END_TIME``) and a :class:`Throughput`
(seconds per encoder image-epoch and per meta iteration: measured by :mod:`cactus.stages.probe`
for a time budget, else :func:`static_throughput`, a cost model calibrated on Omniglot at 2 CPU
threads). The rules:

========================  =====================================================================
encoder                   contrastive (SimCLR, conv4 backbone, 128-d) from 16x16 pixels; PCA below
                          (8x8 digits: four poolings leave nothing, and it keeps the main job short);
                          below 200 meta-train images nothing is planned: the stages' own defaults
encoder epochs            at least the budget's (quick 1, paper 10) and enough for its minimum
                          number of 256-image steps (100 / 1000); cpu and a time budget: at most
                          the paper's, and when time is short at least 35% of the training time
                          (the rest goes to the meta iterations)
k (clusters)              meta-train images / 40, between 10 and 500 (the paper's k on Omniglot,
                          miniImageNet: ~40-80 images per cluster)
P (partitions)            100 (quick: 20)
training size             cpu and a time budget: when the encoder would get under half its epochs, training
                          is planned smaller (each step halving the area, not below 28): photos train at
                          ``train_size`` (not below the side / 2.5) and keep their resolution for the
                          embedding and the evaluation; line drawings are resized (``image_size``)
pseudo-task shape         ways = k / 4 between 5 and 20; 1 shot; queries = half the mean cluster
                          size less the shot, between 1 and 15; min cluster size = shots + queries
meta-learner              ProtoNets fine-tuning the encoder's backbone (init-from-encoder), Adam 1e-4
                          (1e-3 and a fresh conv4 when the encoder has no backbone)
meta iterations           the budget's cap (quick 200, paper 30000), at most 40 passes over the
                          meta-train images in pseudo-task images (not for paper), at least 100;
                          cpu and a time budget: what the steps/s allow in the time left, at most
                          those 40 passes
========================  =====================================================================

A time budget is spent as: the fixed costs (loading, the probe, clustering, tasks, evaluation and
the floors, estimated from the sizes and scaled by how much slower than the cost model the probe
found the machine) plus a 10% margin are set aside, then the encoder's epochs and the meta
iterations fill the rest; a plan that cannot fit says so in its notes and runs the smallest
recipe. ``cpu`` is planned the same way for an hour, with the cost model's throughput instead of a
probe, so that it is the same recipe on every machine (on Omniglot-sized data nothing needs to shrink:
11 epochs and 2,750 iterations, as for ``--budget 20m``).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cactus.core.errors import CactusError

NAMED_BUDGETS = ("quick", "cpu", "paper", "job")
#: Minimum encoder epochs, minimum encoder steps, meta-iteration cap, partitions; ``cpu`` and time budgets
#: start from the paper's and fit them to their wall clock.
RECIPES = {
    "quick": {"epochs": 1, "encoder_steps": 100, "iterations": 200, "partitions": 20},
    "paper": {"epochs": 10, "encoder_steps": 1000, "iterations": 30000, "partitions": 100},
}
CPU_SECONDS = 3600.0  # --budget cpu: within an hour on a 2-core CPU
ENCODER_BATCH = 256
ENCODER_SHARE = 0.35
RESIZE_BELOW = 0.5
MIN_PLANNED_SIDE = 28
MARGIN = 0.10
MIN_ITERATIONS = 100
DATA_PASSES = 40
EVAL_TASKS_IMAGES = 1000 * 400  # 1000 tasks at 5/20-way x 1/5-shot x 5 queries: 400 images per task set
#: Backbone encoders ProtoNets can fine-tune (``--init-from-encoder``).
MIN_IMAGES = 200
#: Below this many pixels on a side the conv4 backbone's four poolings leave almost nothing: PCA instead.
MIN_CONV_SIDE = 16
BACKBONE_ENCODERS = ("contrastive", "deepcluster")
#: Encoders that train at a ``train_size`` and embed at the data's resolution.
TRAIN_SIZE_ENCODERS = ("contrastive",)
#: A planned ``train_size`` is at least the data's side / this: embedding at up to 2.5x the side the encoder
#: trained at was measured to help photos (miniImageNet in colour 42 -> 84, grey 28 -> 70), more was not.
MAX_TRAIN_SHRINK = 2.5
#: The raw-pixel floor's images are shrunk to at most this many values (64x64 RGB): its embedding is that wide.
MAX_FLOOR_PIXELS = 64 * 64 * 3
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Budget:
    """``name``: quick | cpu | paper, or ``time`` with ``seconds`` of wall clock for the whole run."""

    name: str
    seconds: float | None = None

    @property
    def wall_clock(self) -> float | None:
        """Seconds the whole run may take: a time budget's, an hour for ``cpu``; None for quick and paper."""
        return CPU_SECONDS if self.name == "cpu" else self.seconds if self.name == "time" else None

    def __str__(self) -> str:
        if self.name != "time":
            return self.name
        return format_seconds(self.seconds or 0)


def format_seconds(seconds: float) -> str:
    """90 -> 1m30s, 2700 -> 45m, 7200 -> 2h."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def parse_budget(text: str, environ: dict[str, str] | None = None, now: float | None = None) -> Budget:
    """``quick`` | ``cpu`` | ``paper`` | a time (``90s``, ``45m``, ``2h``, ``1h30m``, ``1.5h``, a bare number
    of seconds) | ``job``: the time left to the SLURM job (``SLURM_JOB_END_TIME``, a Unix time).

    Raises a one-line CactusError naming ``--budget`` for anything else.
    """
    value = text.strip().lower()
    if value in NAMED_BUDGETS and value != "job":
        return Budget(value)
    if value == "job":
        env = os.environ if environ is None else environ
        end = env.get("SLURM_JOB_END_TIME")
        if not end:
            raise CactusError("--budget job: SLURM_JOB_END_TIME is not set (not inside a SLURM job?); "
                              "give a time such as 45m")
        try:
            left = float(end) - (time.time() if now is None else now)
        except ValueError:
            raise CactusError(f"--budget job: SLURM_JOB_END_TIME={end!r} is not a Unix time") from None
        if left < 10:
            raise CactusError(f"--budget job: the SLURM job has {max(left, 0):.0f} s left")
        return Budget("time", left)
    parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[smhd])+|\d+(?:\.\d+)?)", value)
    if parts is None:
        raise CactusError(f"--budget {text!r}: expected quick, cpu, paper, job or a time such as 90s, 45m, 2h")
    if value[-1].isdigit():
        seconds = float(value)
    else:
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", value))
    if not 1 <= seconds <= 30 * 86400:
        raise CactusError(f"--budget {text!r}: a time between 1 s and 30 days")
    return Budget("time", seconds)


@dataclass(frozen=True)
class DataShape:
    """What the planner may know about a dataset: its meta-train image count and image shape."""

    images: int
    height: int
    width: int
    channels: int
    drawing: bool = False  # line drawings: most pixel values at black or white (embeddings.augment)

    @property
    def pixels(self) -> int:
        return self.height * self.width * self.channels

    def __str__(self) -> str:
        return f"{self.images} images {self.height}x{self.width}x{self.channels}"


@dataclass(frozen=True)
class Throughput:
    """Seconds per encoder image-epoch (one image, both views) and per meta iteration; ``measured``: probed."""

    encoder_image: float
    meta_iteration: float
    measured: bool = False


#: Cost model at 2 CPU threads, from the Omniglot run in BENCHMARKS.md (22,000 images of 28x28:
#: contrastive 3 epochs 92 s, ProtoNets 2000 iterations of 320 images 378 s, clustering 18 s,
#: evaluation of 4 x 1000 tasks ~50 s), scaled by pixels.
ENCODER_S_PER_PIXEL = 92 / (3 * 22000 * 784)
META_S_PER_PIXEL = 378 / (2000 * 320 * 784)
CLUSTER_S_PER_OP = 18 / (100 * 500 * 22000 * 128 * 8)
EVAL_S_PER_PIXEL = 3e-7
#: Seconds of a meta iteration that do not grow with the pixels (Python, the optimiser): dominant on 8x8 images.
META_S_OVERHEAD = 0.01
THREAD_EXPONENT = 0.8


def thread_scale(threads: int, device: str, gpu: float) -> float:
    """Time relative to the 2-thread calibration: threads speed torch up sub-linearly; a GPU by ``gpu``."""
    if device != "cpu":
        return gpu
    return (2 / max(threads, 1)) ** THREAD_EXPONENT


def static_throughput(shape: DataShape, tasks_images: int, threads: int = 2, device: str = "cpu") -> Throughput:
    """The cost model's throughput for ``shape`` (``tasks_images``: images per pseudo-task)."""
    scale = thread_scale(threads, device, gpu=0.05)
    pixels = shape.height * shape.width  # the conv cost grows with the area; channels only reach the first layer
    return Throughput(ENCODER_S_PER_PIXEL * pixels * scale,
                      (META_S_PER_PIXEL * pixels * tasks_images + META_S_OVERHEAD) * scale)


@dataclass(frozen=True)
class Plan:
    """The planned recipe: ``values`` are ``cactus run`` option values (run names); the rest explains them."""

    values: dict[str, Any]
    budget: Budget
    shape: DataShape
    throughput: Throughput
    estimate: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    resized_from: DataShape | None = None  # the data's own shape, when the plan trains on smaller images

    @property
    def data(self) -> str:
        """The planned shape, and the data's own when the images are resized or trained on smaller."""
        if self.resized_from is None:
            return str(self.shape)
        if "train_size" in self.values:
            return f"{self.resized_from} (trained at {self.shape.height}x{self.shape.width})"
        return f"{self.shape} (resized from {self.resized_from.height}x{self.resized_from.width})"

    @property
    def seconds(self) -> float:
        return sum(self.estimate.values())

    def summary(self) -> str:
        """One line: recipe, budget, sizes, estimated time."""
        v = self.values
        if "algo" not in v:
            return f"plan ({self.budget}): {self.data}; too few images to plan, the stages' defaults"
        encoder = f"{v['method']} {v['epochs']} ep" if v.get("epochs") else v["method"]
        init = "+backbone" if v.get("init_from_encoder") else ""
        return (f"plan ({self.budget}): {self.data}; {encoder}, k={v['clusters']} P={v['partitions']}, "
                f"{v['ways']}-way {v['shots']}-shot {v['queries']}-query, {v['algo']}{init} {v['iterations']} it "
                f"lr {v['meta_lr']:g}; est. {format_seconds(self.seconds)}"
                f"{' (measured)' if self.throughput.measured else ''}")

    def table(self) -> str:
        """The plan as a two-column table (``--dry-run``)."""
        rows = [("budget", str(self.budget)), ("data", self.data)]
        rows += [(name.replace("_", "-"), str(value)) for name, value in self.values.items()]
        rows += [(f"est. {stage}", format_seconds(s)) for stage, s in self.estimate.items()]
        rows += [("est. total", format_seconds(self.seconds)),
                 ("throughput", f"encoder {self.throughput.encoder_image * 1e3:.3f} ms/image-epoch, meta "
                                f"{self.throughput.meta_iteration * 1e3:.1f} ms/iteration "
                                f"({'measured' if self.throughput.measured else 'cost model'})")]
        rows += [("note", note) for note in self.notes]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.values, "budget": str(self.budget), "shape": asdict(self.shape),
                "resized_from": asdict(self.resized_from) if self.resized_from else None,
                "throughput": asdict(self.throughput), "estimate": self.estimate, "notes": list(self.notes)}


def task_shape(images: int, clusters: int, given: dict[str, Any]) -> tuple[int, int, int]:
    """(ways, shots, queries) of the pseudo-tasks for ``images`` meta-train images in ``clusters`` clusters."""
    ways = given.get("ways") or min(20, max(5, clusters // 4))
    shots = given.get("shots") or 1
    queries = given.get("queries") or min(15, max(1, images // clusters // 2 - shots))
    return ways, shots, queries


def recipe(shape: DataShape, budget_name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The named budget's recipe for ``shape`` (``given``: options the user set, which it builds around)."""
    given = given or {}
    base = RECIPES[budget_name]
    n = shape.images
    if n < MIN_IMAGES:  # too few images to contrast or to cluster into pseudo-classes: the stages' defaults
        return {"iterations": given.get("iterations") or min(base["iterations"], 2000)}
    method = given.get("method") or ("contrastive" if min(shape.height, shape.width) >= MIN_CONV_SIDE else "pca")
    clusters = given.get("clusters") or min(500, max(10, n // 40))
    ways, shots, queries = task_shape(n, clusters, given)
    algo = given.get("algo") or "protonets"
    backbone = method in BACKBONE_ENCODERS and algo == "protonets"
    values: dict[str, Any] = {"method": method}
    if method in BACKBONE_ENCODERS:
        values["dim"] = 128
        values["epochs"] = max(base["epochs"], base["encoder_steps"] * ENCODER_BATCH // max(n, 1))
    values.update({"clusters": clusters, "partitions": base["partitions"], "ways": ways, "shots": shots,
                   "queries": queries, "min_cluster_size": shots + queries, "algo": algo})
    passes = math.ceil(DATA_PASSES * n / (ways * (shots + queries)))
    cap = base["iterations"] if budget_name == "paper" else min(base["iterations"], passes)
    values["iterations"] = max(MIN_ITERATIONS, cap)
    values["meta_lr"] = 1e-4 if backbone else 1e-3
    values["init_from_encoder"] = backbone
    return values


def fixed_costs(shape: DataShape, values: dict[str, Any], threads: int = 2, device: str = "cpu",
                eval_tasks: int = 1000) -> dict[str, float]:
    """Seconds of the stages that do not scale with epochs / iterations: clustering, evaluation, floors."""
    scale = thread_scale(threads, device, gpu=0.2)
    dim = values.get("dim") or 64
    cluster = CLUSTER_S_PER_OP * values["partitions"] * values["clusters"] * shape.images * dim * 8 * scale
    images = EVAL_TASKS_IMAGES * eval_tasks / 1000
    evaluation = EVAL_S_PER_PIXEL * images * shape.height * shape.width * scale
    floors = 2e-9 * images * min(shape.pixels, MAX_FLOOR_PIXELS) + 3  # pixel embedding + two 1-NN evaluations
    # embedding every image once: one clean view, forward only (~1/6 of a two-view training step), ~1.5x the
    # meta-train images
    embed_pass = ENCODER_S_PER_PIXEL * shape.height * shape.width * shape.images * 0.25 * scale
    return {"cluster": cluster + embed_pass + 2, "evaluate": evaluation + floors + 5}


def plan(shape: DataShape, budget: Budget, throughput: Throughput | None = None, given: dict[str, Any] | None = None,
         threads: int = 2, device: str = "cpu", spent: float = 0.0, eval_tasks: int = 1000) -> Plan:
    """The recipe for ``shape`` under ``budget``; ``spent``: seconds already used (loading, the probe);
    ``eval_tasks``: evaluation tasks per setting (the evaluation's time is set aside).

    When an hour (``cpu``) or a time budget leaves a conv encoder less than ``RESIZE_BELOW`` of its epochs
    at the data's resolution, training is planned on smaller images, each step halving the area, down
    to ``MIN_PLANNED_SIDE``: a few epochs at 42x42 learn more than one at 84x84. Photos keep their
    resolution for the embedding and the evaluation and only train smaller (``train_size``: the
    contrastive encoder's views and ProtoNets' meta-training; the backbone averages its features over
    the grid): trained on 42x42 views, miniImageNet's 84x84 images embed 3.3 points better at 5-way
    1-shot than 42x42 ones. Line drawings (``shape.drawing``) lose at a larger test size (Omniglot trained
    at 28: 95.0 at 28, 89.1 at 56), so for them, or another encoder or learner, the images themselves
    are resized (``image_size``). Not when the user gave ``image_size``, ``train_size`` or ``epochs``.
    ``throughput`` (measured at the data's resolution) is scaled by the area.
    """
    given = given or {}
    planned = _plan_shape(shape, budget, throughput, given, threads, device, spent, eval_tasks)
    if (budget.wall_clock is None or "epochs" not in planned.values
            or any(given.get(name) is not None for name in ("image_size", "train_size", "epochs"))):
        return planned
    trains_smaller = (planned.values["method"] in TRAIN_SIZE_ENCODERS and planned.values["algo"] == "protonets"
                      and not shape.drawing)
    cap = recipe(shape, "paper", given)["epochs"]
    side = min(shape.height, shape.width)
    smallest = max(MIN_PLANNED_SIDE, math.ceil(side / MAX_TRAIN_SHRINK) if trains_smaller else 0)
    while planned.values["epochs"] < RESIZE_BELOW * cap and side > smallest:
        side = max(smallest, round(side / math.sqrt(2)))
        smaller = replace(shape, height=side, width=side)
        area = side * side / (shape.height * shape.width)
        speed = None if throughput is None else Throughput(
            throughput.encoder_image * area, throughput.meta_iteration * area, throughput.measured)
        planned = _plan_shape(smaller, budget, speed, given, threads, device, spent, eval_tasks,
                              full=shape if trains_smaller else None)
        planned = replace(planned, values={**planned.values, ("train_size" if trains_smaller else "image_size"): side},
                          resized_from=shape)
    return planned


def _plan_shape(shape: DataShape, budget: Budget, throughput: Throughput | None, given: dict[str, Any],
                threads: int, device: str, spent: float, eval_tasks: int, full: DataShape | None = None) -> Plan:
    """:func:`plan` for training on images of ``shape``; ``full``: the larger images that the embedding and
    the evaluation then see (their costs are those of ``full``), when training is at a ``train_size``.

    A time budget starts from the caps of the paper's recipe (epochs, and iterations at most
    ``DATA_PASSES`` passes over the data) and shrinks them to the time left after the fixed costs
    and the margin: the encoder keeps at least ``ENCODER_SHARE`` of the training time.
    """
    limit = budget.wall_clock  # cpu: an hour, under the cost model unless a throughput is given
    timed = limit is not None
    values = recipe(shape, "paper" if timed else budget.name, given)
    if "algo" not in values:
        return Plan(values, budget, shape, throughput or Throughput(0.0, 0.0), {}, ("too few images to plan",))
    if timed:  # iterations capped by the passes over the data as for cpu, not the paper's 30000
        passes = math.ceil(DATA_PASSES * shape.images / (values["ways"] * (values["shots"] + values["queries"])))
        values["iterations"] = max(MIN_ITERATIONS, min(values["iterations"], passes))
    tasks_images = values["ways"] * (values["shots"] + values["queries"])
    model = static_throughput(shape, tasks_images, threads, device)
    speed = throughput or model
    # a measured machine slower (or faster) than the cost model is so for clustering and evaluation too
    slowdown = max(1.0, speed.meta_iteration / model.meta_iteration) if throughput and throughput.measured else 1.0
    fixed = {k: v * slowdown for k, v in fixed_costs(full or shape, values, threads, device, eval_tasks).items()}
    notes: list[str] = []
    epoch_s = speed.encoder_image * shape.images
    if limit is not None:
        train = limit * (1 - MARGIN) - spent - sum(fixed.values())
        cap_epochs, cap_iterations = values.get("epochs", 0), values["iterations"]
        if given.get("epochs") is not None and "epochs" in values:
            cap_epochs = given["epochs"]
        if given.get("iterations") is not None:
            cap_iterations = given["iterations"]
        if epoch_s * cap_epochs + speed.meta_iteration * cap_iterations > train:
            if "epochs" in values:
                encoder_time = max(ENCODER_SHARE * train, train - speed.meta_iteration * cap_iterations)
                values["epochs"] = int(max(1, min(cap_epochs, encoder_time // max(epoch_s, 1e-9))))
            left = train - epoch_s * values.get("epochs", 0)
            iterations = int(left // max(speed.meta_iteration, 1e-9))
            values["iterations"] = max(MIN_ITERATIONS // 2, min(cap_iterations, iterations))
            if iterations < MIN_ITERATIONS // 2:
                notes.append(f"budget {budget} is too short for this data: the smallest recipe may overrun it")
    for name in ("epochs", "iterations"):
        if given.get(name) is not None and (name in values or name == "iterations"):
            values[name] = given[name]
    estimate = {"load+probe": spent, "embed": epoch_s * values["epochs"] if "epochs" in values else 1.0,
                "cluster": fixed["cluster"], "meta": speed.meta_iteration * values["iterations"],
                "evaluate": fixed["evaluate"]}
    if limit is not None and sum(estimate.values()) > limit and not notes:
        notes.append(f"budget {budget} is too short for this data on this machine now: the estimate overruns it")
    return Plan(values, budget, shape, speed, {k: round(v, 1) for k, v in estimate.items()}, tuple(notes))
