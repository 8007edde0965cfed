"""Build a meta-learner by name from a meta artifact's config."""

from __future__ import annotations

from typing import Any

from cactus.core.errors import CactusError

ALGOS = ("protonets", "maml")
MAML_KEYS = ("inner_steps", "test_inner_steps", "inner_lr", "first_order", "learn_inner_lr")


def learner_config(algo: str, ways: int, options: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters that define a learner (stored in its artifact's config)."""
    if algo not in ALGOS:
        raise CactusError(f"--algo {algo!r}: expected one of {', '.join(ALGOS)}")
    maml = algo == "maml"
    config: dict[str, Any] = {
        "algo": algo,
        "ways": ways,
        "filters": options.get("filters") or (32 if maml else 64),
        "downsample": options.get("downsample") or ("stride" if maml else "pool"),
        "meta_lr": options.get("meta_lr", 1e-3),
    }
    if options.get("encoder") is not None:
        if maml:
            raise CactusError("--init-from: only ProtoNets can start from a trained encoder")
        config["encoder"] = options["encoder"]
        config.pop("filters")
        config.pop("downsample")
    if options.get("train_size") is not None:
        if maml:
            raise CactusError("--train-size: only ProtoNets meta-train at another resolution than they are evaluated")
        config["train_size"] = int(options["train_size"])
    if maml:
        defaults = {"inner_steps": 5, "test_inner_steps": 50, "inner_lr": 0.05, "first_order": False,
                    "learn_inner_lr": False}
        config.update({k: options[k] if options.get(k) is not None else v for k, v in defaults.items()})
    return config


def build_learner(
    config: dict[str, Any], image_shape: tuple[int, int, int], device, seed: int,
    encoder_state: dict[str, Any] | None = None,
    chunks: dict[str, int | bool] | None = None,
):
    """A fresh learner for images of shape (H, W, C).

    A config with an ``encoder`` (ProtoNets started from a trained encoder) needs that encoder's
    weights in ``encoder_state``: the embed artifact's /encoder group, or the learner's /weights.
    ``chunks``: MAML's ``task_chunk`` / ``query_chunk`` / ``recompute`` (memory knobs, same meta-gradient).
    """
    chunks = {k: v for k, v in (chunks or {}).items() if v is not None}
    if chunks and config["algo"] != "maml":
        raise CactusError(f"--{next(iter(chunks)).replace('_', '-')}: only MAML has this memory knob")
    height, width, channels = image_shape
    if "encoder" in config:
        from cactus.learners.protonets import ProtoNets
        from embeddings import encoder_class

        params = dict(config["encoder"])
        if not isinstance(params.get("method"), str):
            raise CactusError("--init-from: the stored encoder config names no method; recompute the artifact")
        encoder = encoder_class(params["method"]).from_params(params, stored="the learner's --init-from artifact")
        if encoder_state is None:
            raise CactusError("--init-from: the encoder's weights are missing")
        encoder.set_state(encoder_state)
        if not hasattr(encoder, "backbone_"):
            raise CactusError(f"--init-from: a {encoder.name} encoder has no conv backbone to fine-tune")
        return ProtoNets(channels, height, int(config["ways"]), meta_lr=float(config["meta_lr"]), device=device,
                         seed=seed, encoder=encoder, train_size=config.get("train_size"))
    if height != width:
        raise CactusError(f"images of {height}x{width}: the conv net needs square images; pass --image-size")
    common = dict(in_channels=channels, image_size=height, ways=int(config["ways"]), filters=int(config["filters"]),
                  downsample=config["downsample"], meta_lr=float(config["meta_lr"]), device=device, seed=seed)
    if config["algo"] == "protonets":
        from cactus.learners.protonets import ProtoNets

        return ProtoNets(**common, train_size=config.get("train_size"))
    if config["algo"] == "maml":
        from cactus.learners.maml import MAML

        return MAML(**common, **{k: config[k] for k in MAML_KEYS}, **chunks)
    raise CactusError(f"unknown meta-learning algorithm {config['algo']!r}")
