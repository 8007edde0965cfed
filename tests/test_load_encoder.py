"""``--method load``: the user's own embeddings (.npy/.npz/.h5) or TorchScript encoder, checked hard."""

from __future__ import annotations

import numpy as np
import pytest

from cactus.core.errors import CactusError
from embeddings import encoder_class
from embeddings.load import LoadEncoder

N, D = 30, 6


@pytest.fixture
def images() -> np.ndarray:
    """(N, 8, 8, 1) uint8: a stand-in dataset, pixels of no importance for stored embeddings."""
    return np.random.default_rng(0).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)


@pytest.fixture
def table() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)


def write(path, table, kind: str):
    if kind == "npy":
        np.save(path, table)
    elif kind == "npz":
        np.savez(path, table)
    elif kind == "npz-named":
        np.savez(path, other=np.zeros(3), embeddings=table)
    else:
        import h5py

        with h5py.File(path, "w") as out:
            out["embeddings"] = table


@pytest.mark.parametrize("kind,suffix", [("npy", ".npy"), ("npz", ".npz"), ("npz-named", ".npz"), ("h5", ".h5")])
def test_stored_embeddings_round_trip(tmp_path, images, table, kind, suffix):
    path = tmp_path / f"emb{suffix}"
    write(path, table, kind)
    assert encoder_class("load") is LoadEncoder
    encoder = LoadEncoder(str(path)).fit(images)
    np.testing.assert_array_equal(encoder.transform(images), table)
    assert encoder.transform(images).dtype == np.float32

    rows = np.array([4, 0, 17])
    np.testing.assert_array_equal(encoder.transform_rows(rows).transform(images[rows]), table[rows])


def test_rows_of_a_split_checked_against_the_whole_dataset(tmp_path, images, table):
    path = tmp_path / "emb.npy"
    np.save(path, table)
    train = np.arange(0, 20)
    encoder = LoadEncoder(str(path)).transform_rows(train, dataset_size=N).fit(images[train])
    test = np.arange(20, N)
    np.testing.assert_array_equal(encoder.transform_rows(test).transform(images[test]), table[test])
    with pytest.raises(CactusError, match="dataset has 31 images"):
        LoadEncoder(str(path)).transform_rows(train, dataset_size=N + 1).fit(images[train])
    with pytest.raises(CactusError, match="5 images to embed but 10 dataset rows"):
        encoder.transform_rows(test).transform(images[:5])


def test_params_rebuild_the_encoder_and_state_restores_it(tmp_path, images, table):
    path = tmp_path / "emb.npy"
    np.save(path, table)
    encoder = LoadEncoder(str(path)).fit(images)
    params = encoder.get_params()
    restored = LoadEncoder(**{k: v for k, v in params.items() if k != "method"})
    restored.set_state(encoder.get_state())
    np.testing.assert_array_equal(restored.transform(images), table)


def test_wrong_row_count_is_refused(tmp_path, images, table):
    path = tmp_path / "emb.npy"
    np.save(path, table[:-1])
    with pytest.raises(CactusError, match=rf"emb\.npy: holds {N - 1} embedding rows but the dataset has {N}"):
        LoadEncoder(str(path)).fit(images)


@pytest.mark.parametrize("bad,message", [
    (np.full((N, D), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.zeros((N, D, 2), dtype=np.float32), "2-D"),
    (np.array(["a"] * N), "must be numbers"),
])
def test_bad_arrays_are_refused(tmp_path, images, bad, message):
    path = tmp_path / "emb.npy"
    np.save(path, bad)
    with pytest.raises(CactusError, match=message):
        LoadEncoder(str(path)).fit(images)


def test_object_arrays_are_never_unpickled(tmp_path, images):
    path = tmp_path / "emb.npy"
    objects = np.empty((N, D), dtype=object)
    objects[:] = 1.0
    np.save(path, objects, allow_pickle=True)
    with pytest.raises(CactusError, match=r"emb\.npy: not a plain numeric array file"):
        LoadEncoder(str(path)).fit(images)
    npz = tmp_path / "emb.npz"
    np.savez(npz, embeddings=objects)
    with pytest.raises(CactusError, match=r"emb\.npz: not a plain numeric array file"):
        LoadEncoder(str(npz)).fit(images)


def test_missing_or_unknown_files_are_named(tmp_path, images):
    with pytest.raises(CactusError, match="nowhere.npy: no such file"):
        LoadEncoder(str(tmp_path / "nowhere.npy")).fit(images)
    with pytest.raises(CactusError, match="unknown file type .txt"):
        LoadEncoder(str(tmp_path / "emb.txt")).fit(images)
    h5 = tmp_path / "emb.h5"
    import h5py

    with h5py.File(h5, "w") as out:
        out["vectors"] = np.zeros((N, D))
    with pytest.raises(CactusError, match="no dataset 'embeddings'"):
        LoadEncoder(str(h5)).fit(images)
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a torchscript file")
    with pytest.raises(CactusError, match="model.pt: not a TorchScript encoder"):
        LoadEncoder(str(garbage)).fit(images)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_encoder_is_applied_to_the_images(tmp_path, images):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 5)

        def forward(self, x):  # (B, 1, 8, 8) in [0, 1]
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "encoder.pt"
    torch.jit.script(net).save(str(path))
    encoder = LoadEncoder(str(path)).fit(images)
    out = encoder.transform(images)
    assert out.shape == (N, 5) and out.dtype == np.float32
    with torch.no_grad():
        expected = net(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    restored = LoadEncoder(str(path))
    restored.set_state(encoder.get_state())
    np.testing.assert_array_equal(restored.transform(images), out)
    with pytest.raises(CactusError, match="encoder.pt: TorchScript encoder failed"):
        LoadEncoder(str(path)).fit(images[:, :4, :4])
