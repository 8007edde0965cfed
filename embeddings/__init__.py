"""The unsupervised encoders of ``cactus embed``, one per file, looked up by name.

The registry maps a method name to ``module:Class``; modules are imported only when used, so
``cactus --help`` stays fast.
"""

from __future__ import annotations

import importlib

from cactus.core.errors import CactusError

REGISTRY: dict[str, str] = {
    "pca": "embeddings.pca:PCAEncoder",
    "pixels": "embeddings.pixels:PixelsEncoder",
    "contrastive": "embeddings.contrastive:ContrastiveEncoder",
    "deepcluster": "embeddings.deepcluster:DeepClusterEncoder",
    "load": "embeddings.load:LoadEncoder",
    "acai": "embeddings.acai:ACAIEncoder",
    "bigan": "embeddings.bigan:BiGANEncoder",
    "infogan": "embeddings.infogan:InfoGANEncoder",
    "learned-rule": "embeddings.learned_rule:LearnedRuleEncoder",
}


def encoder_class(method: str) -> type:
    """The encoder class registered under ``method``."""
    if method not in REGISTRY:
        raise CactusError(f"--method {method!r}: unknown encoder; choose from {', '.join(sorted(REGISTRY))}")
    module_name, class_name = REGISTRY[method].split(":")
    return getattr(importlib.import_module(module_name), class_name)
