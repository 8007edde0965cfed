"""Named settings for ``cactus run --preset NAME`` and the ``--budget`` that scales them.

A preset fills in every option the user did not give. ``--budget paper`` keeps the paper's
iteration counts and the encoders' full settings; ``--budget cpu`` scales them so the whole
pipeline, embedding included, finishes within an hour on a 2-core CPU (see BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

from cactus.core.errors import CactusError

OMNIGLOT_DEFAULT = "omniglot:../shared/data/omniglot"
MINIIMAGENET_DEFAULT = "folder:~/.cache/cactus/data/miniimagenet"  # where ../shared/data/miniimagenet/build.sh puts it
PAPER_EVAL = {"eval_ways": "5,20", "eval_shots": "1,5", "eval_tasks": 1000, "eval_queries": 5}

# The CACTUs paper's protocol (Hsu, Levine & Finn 2019, from its public code): ACAI embedding,
# k = 500, P = 100, 20-way 1-shot tasks.
PRESETS: dict[str, dict[str, Any]] = {
    "cactus-omniglot": {
        "data": OMNIGLOT_DEFAULT, "method": "acai", "dim": 256, "clusters": 500, "partitions": 100,
        "algo": "maml", "ways": 20, "shots": 1, "queries": 5, "meta_batch": 8, "filters": 32,
        "downsample": "stride", "inner_steps": 5, "test_inner_steps": 50, "inner_lr": 0.05, "meta_lr": 1e-3,
        **PAPER_EVAL,
        "budget": {"paper": {"iterations": 30000, "quick": False}, "cpu": {"iterations": 600, "quick": True}},
    },
    "cactus-omniglot-protonets": {
        "data": OMNIGLOT_DEFAULT, "method": "acai", "dim": 256, "clusters": 500, "partitions": 100,
        "algo": "protonets", "ways": 20, "shots": 1, "queries": 15, "meta_batch": 1, "filters": 64,
        "downsample": "pool", "meta_lr": 1e-3, **PAPER_EVAL,
        "budget": {"paper": {"iterations": 30000, "quick": False}, "cpu": {"iterations": 2000, "quick": True}},
    },
    # The CACTUs paper's miniImageNet protocol (its public code, scripts/miniimagenet_kmeans.sh): DeepCluster
    # 256-d, k = 500, P = 50, 5-way 1-shot 5-query tasks, MAML on a max-pool conv4-32 at inner lr 0.05 with 5
    # steps (50 at test), meta-batch 8, 60,000 iterations. Our choices: 15 queries per class at evaluation (the
    # paper's code scored 5), and under --budget cpu 42x42 images (84x84 DeepCluster alone takes hours on 2
    # cores: BENCHMARKS.md) with DeepCluster's quick setting and 2,000 iterations.
    "cactus-miniimagenet": {
        "data": MINIIMAGENET_DEFAULT, "method": "deepcluster", "dim": 256, "clusters": 500, "partitions": 50,
        "algo": "maml", "ways": 5, "shots": 1, "queries": 5, "meta_batch": 8, "filters": 32,
        "downsample": "pool", "inner_steps": 5, "test_inner_steps": 50, "inner_lr": 0.05, "meta_lr": 1e-3,
        "eval_ways": "5", "eval_shots": "1,5,20,50", "eval_tasks": 1000, "eval_queries": 15,
        "budget": {"paper": {"iterations": 60000, "quick": False, "image_size": 84},
                   "cpu": {"iterations": 2000, "quick": True, "image_size": 42}},
    },
    # Ours, as one fixed recipe for any dataset (the default `cactus run` plans it from the data
    # instead, cactus.stages.planner): the CACTUs protocol on a contrastive (SimCLR) embedding;
    # ProtoNets fine-tune the encoder's own backbone on the pseudo-tasks instead of a fresh conv net.
    "contrastive-protonets": {
        "method": "contrastive", "dim": 128, "clusters": 500, "partitions": 100,
        "algo": "protonets", "ways": 20, "shots": 1, "queries": 15, "meta_batch": 1, "init_from_encoder": True,
        "meta_lr": 1e-4, **PAPER_EVAL,
        "budget": {"paper": {"iterations": 30000, "quick": False}, "cpu": {"iterations": 2000, "quick": True}},
    },
}
BUDGETS = ("cpu", "paper")


def preset_values(name: str | None, budget: str) -> dict[str, Any]:
    """The option values a preset sets for a budget (empty without a preset)."""
    if name is not None and budget not in BUDGETS:
        raise CactusError(f"--budget {budget!r}: a preset takes cpu or paper (a time budget plans the default "
                          "recipe: leave out --preset)")
    if name is None:
        return {}
    if name not in PRESETS:
        raise CactusError(f"--preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    preset = dict(PRESETS[name])
    scaled = preset.pop("budget")[budget]
    return {**preset, **scaled}
