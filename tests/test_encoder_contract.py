"""The encoder contract, checked for every encoder in ``embeddings.REGISTRY`` on real Omniglot images.

Each encoder gets a tiny setting (one epoch, small batches) so a fit takes seconds: the point is
the contract (shapes, dtype, determinism, weights through an HDF5 artifact, clear errors), not
the quality of the embedding, which the slow per-method tests and bench/encoders.py measure.
``load`` has its own tests (tests/test_load_encoder.py): it needs a file, not images.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from cactus.core.errors import CactusError
from embeddings import REGISTRY, encoder_class

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
METHODS = sorted(m for m in REGISTRY if m != "load")

# Small but real settings; keys a constructor does not accept are dropped.
TINY_COMMON = {"quick": True, "epochs": 1, "batch_size": 32, "threads": 1, "device": "cpu"}
TINY = {
    "pca": {"dim": 16},
    "contrastive": {"width": 16, "dim": 32, "proj_dim": 16},
    "deepcluster": {"width": 16, "features": 32, "dim": 16, "clusters": 10},
}


def tiny_kwargs(method: str, seed: int) -> dict:
    accepted = inspect.signature(encoder_class(method).__init__).parameters
    kwargs = {k: v for k, v in TINY_COMMON.items() if k in accepted}
    kwargs.update(TINY.get(method, {}))
    kwargs["seed"] = seed
    return kwargs


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """(200 meta-train images, 40 test images), (N, 28, 28, 1) uint8."""
    import torch

    from cactus.datasets.dataset import load_dataset

    if not OMNIGLOT.exists():
        pytest.skip(f"no Omniglot at {OMNIGLOT}")
    torch.set_num_threads(1)
    ds = load_dataset(f"omniglot:{OMNIGLOT}", image_size=28)
    rng = np.random.default_rng(0)
    train = ds.images[np.sort(rng.choice(ds.indices(0), 200, replace=False))]
    test = ds.images[np.sort(rng.choice(ds.indices(2), 40, replace=False))]
    return train, test


@pytest.fixture(scope="module")
def fitted(images):
    """Per method: an encoder fitted with seed 7, cached across the tests of this module."""
    cache: dict[str, object] = {}

    def get(method: str):
        if method not in cache:
            cache[method] = encoder_class(method)(**tiny_kwargs(method, seed=7)).fit(images[0])
        return cache[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_output_shape_and_dtype(method, images, fitted):
    encoder = fitted(method)
    out = encoder.transform(images[1])
    assert out.dtype == np.float32
    assert out.ndim == 2 and out.shape[0] == len(images[1]) and out.shape[1] > 0
    assert np.isfinite(out).all()
    assert out.std(axis=0).max() > 0, "every image got the same embedding"
    # a subset embeds the same as inside a larger batch (no batch-dependent statistics)
    np.testing.assert_allclose(encoder.transform(images[1][:5]), out[:5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_embedding(method, images, fitted):
    again = encoder_class(method)(**tiny_kwargs(method, seed=7)).fit(images[0])
    np.testing.assert_array_equal(again.transform(images[1]), fitted(method).transform(images[1]))
    if "epochs" in again.get_params():  # a trained network: another seed must give other weights
        other = encoder_class(method)(**tiny_kwargs(method, seed=8)).fit(images[0])
        assert not np.array_equal(other.transform(images[1]), again.transform(images[1]))


@pytest.mark.parametrize("method", METHODS)
def test_weights_round_trip_through_an_artifact(method, images, fitted, tmp_path):
    from cactus.core.store import read_artifact, write_artifact

    encoder = fitted(method)
    state = encoder.get_state()
    assert state and all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    params = encoder.get_params()
    path = tmp_path / "embed.h5"
    write_artifact(path, "embed", {"encoder": params}, [], {f"encoder/{k}": v for k, v in state.items()})
    stored = read_artifact(path, stage="embed")

    kwargs = {k: v for k, v in stored.config["encoder"].items() if k != "method"}
    restored = encoder_class(method)(**kwargs)
    assert restored.get_params() == params
    restored.set_state(stored.group("encoder"))
    np.testing.assert_array_equal(restored.transform(images[1]), encoder.transform(images[1]))


@pytest.mark.parametrize("method", METHODS)
def test_wrong_images_are_refused(method, images, fitted):
    encoder = fitted(method)
    if encoder.any_resolution:  # a net that averages over the grid embeds any size, but not other channels
        full, half = encoder.transform(images[1]), encoder.transform(images[1][:, ::2, ::2])
        assert half.shape == full.shape and not np.allclose(half, full)
        with pytest.raises(CactusError, match="trained on"):
            encoder.transform(np.repeat(images[1], 3, axis=3))
    else:
        with pytest.raises(CactusError, match=r"\(14, 14, 1\)"):
            encoder.transform(images[1][:, ::2, ::2])
    with pytest.raises(CactusError, match="uint8"):
        encoder.transform(images[1].astype(np.float32))
    with pytest.raises(CactusError, match="before fit"):
        encoder_class(method)(**tiny_kwargs(method, seed=0)).transform(images[1])


# -- parameters: scikit-learn's conventions, for every registered encoder (no fitting) --------------------------
ALL_METHODS = sorted(REGISTRY)
REQUIRED = {"load": {"path": "emb.npy"}}  # parameters without a default


def test_not_in_key_is_one_declaration_for_every_encoder():
    from embeddings.base import Encoder

    assert Encoder.NOT_IN_KEY == ("device", "threads")
    for method in ALL_METHODS:
        assert encoder_class(method).NOT_IN_KEY is Encoder.NOT_IN_KEY, f"{method} redeclares NOT_IN_KEY"


def _other_value(name: str, default, i: int):
    """A value for parameter ``name`` that differs from its default and from the other parameters' values."""
    if isinstance(default, bool):
        return not default
    if name == "device":
        return "cpu" if default != "cpu" else "cuda"
    if isinstance(default, (int, float)):
        return default + i + 1
    return f"value{i}" if name in ("path", "rule") else i + 1  # files are named by strings, the rest are numbers


@pytest.mark.parametrize("method", ALL_METHODS)
def test_params_are_the_init_arguments_stored_unchanged(method):
    """get_params() == the __init__ arguments, each stored unchanged; the key drops exactly NOT_IN_KEY."""
    cls = encoder_class(method)
    signature = inspect.signature(cls.__init__).parameters
    names = [n for n in signature if n != "self"]
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.values())
    given = {name: _other_value(name, signature[name].default, i) for i, name in enumerate(names)}
    encoder = cls(**given)
    assert encoder.get_params() == given
    assert all(getattr(encoder, name) == value for name, value in given.items())
    # The key: the method and every parameter but the declared NOT_IN_KEY list.
    key = encoder.key_params()
    assert key == {"method": method, **{k: v for k, v in given.items() if k not in cls.NOT_IN_KEY}}
    assert not set(cls.NOT_IN_KEY) & set(key)
    assert not [name for name in vars(encoder) if name not in names], "__init__ stores nothing but its arguments"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_clone_from_params_and_from_stored_config(method):
    cls = encoder_class(method)
    encoder = cls(**REQUIRED.get(method, {}), seed=5)
    clone = cls(**encoder.get_params())
    assert clone is not encoder and clone.get_params() == encoder.get_params()
    rebuilt = cls.from_params(encoder.key_params())  # the stored config: `method` ignored, device/threads default
    assert rebuilt.key_params() == encoder.key_params()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_unknown_or_missing_param_is_one_line(method):
    cls = encoder_class(method)
    with pytest.raises(CactusError, match=rf"^--method {method}: unknown option 'foo'") as error:
        cls.from_params({**REQUIRED.get(method, {}), "foo": 1})
    assert "\n" not in str(error.value)
    with pytest.raises(CactusError, match=r"old\.h5 was made by another version of cactus: recompute it"):
        cls.from_params({**REQUIRED.get(method, {}), "hyper": {}}, stored="old.h5")
    if method in REQUIRED:
        with pytest.raises(CactusError, match=rf"--method {method}: option 'path' is required"):
            cls.from_params({})


def test_bad_option_value_fails_before_any_data_is_read():
    for method, options in (("acai", {"epochs": 0}), ("contrastive", {"lr": -1.0}), ("pca", {"dim": -1}),
                            ("deepcluster", {"dim": 256, "features": 128}), ("learned-rule", {"steps": -1})):
        with pytest.raises(CactusError, match="--(epochs|lr|dim|steps)"):
            encoder_class(method).from_params(options)


def test_stored_config_with_an_old_key_is_refused_in_one_line(tmp_path):
    """An artifact whose stored encoder config has a key the encoder no longer takes says to recompute it."""
    from cactus.core.store import read_artifact, write_artifact
    from cactus.stages.embed import load_encoder

    path = tmp_path / "embed.h5"
    config = {"encoder": {"method": "learned-rule", "dim": 16, "seed": 0, "rule_key": "abc"}}
    write_artifact(path, "embed", config, [], {"encoder/input_shape": np.asarray([8, 8, 1])})
    with pytest.raises(CactusError, match=r"unknown option 'rule_key'.*embed\.h5.*recompute it") as error:
        load_encoder(read_artifact(path, stage="embed"))
    assert "\n" not in str(error.value)
