"""Dataset loaders on real files (Omniglot) and on files the tests write (IDX, folder, npz, h5)."""

from __future__ import annotations

import gzip
import struct

import h5py
import numpy as np
import pytest
from PIL import Image

from cactus.core.errors import CactusError
from cactus.datasets.dataset import TEST, TRAIN, VAL, load_dataset
from tests.conftest import OMNIGLOT, needs_omniglot


@needs_omniglot
def test_omniglot_has_1623_characters_of_20_drawings(omniglot):
    labels = omniglot.true_labels()
    assert omniglot.images.shape == (32460, 28, 28, 1)
    assert omniglot.images.dtype == np.uint8
    assert len(omniglot.class_names) == 1623
    assert set(np.bincount(labels)) == {20}
    # strokes are bright on a dark background
    assert np.median(omniglot.images) == 0 and omniglot.images.max() == 255


@needs_omniglot
def test_omniglot_default_split_is_1100_100_423_characters_and_seeded(omniglot):
    labels = omniglot.true_labels()
    per_split = [len(np.unique(labels[omniglot.split == s])) for s in (TRAIN, VAL, TEST)]
    assert per_split == [1100, 100, 423]
    again = load_dataset(f"omniglot:{OMNIGLOT}")
    assert np.array_equal(again.split, omniglot.split)
    other = load_dataset(f"omniglot:{OMNIGLOT}", split_seed=1)
    assert not np.array_equal(other.split, omniglot.split)


@needs_omniglot
def test_omniglot_lake_split_is_background_versus_evaluation():
    lake = load_dataset(f"omniglot:{OMNIGLOT}", split="lake")
    names = np.asarray(lake.class_names)[lake.true_labels()]
    assert all(n.startswith("background/") for n in names[lake.split == TRAIN][:: 500])
    assert all(n.startswith("evaluation/") for n in names[lake.split == TEST][:: 500])
    assert (lake.split == TRAIN).sum() == 19280 and (lake.split == TEST).sum() == 13180


@needs_omniglot
def test_omniglot_from_extracted_folders_matches_the_zips(tmp_path, omniglot):
    import zipfile

    with zipfile.ZipFile(OMNIGLOT / "images_evaluation.zip") as z:
        members = [n for n in z.namelist() if n.startswith("images_evaluation/Angelic/")]
        z.extractall(tmp_path, members)
    with zipfile.ZipFile(OMNIGLOT / "images_background.zip") as z:
        members = [n for n in z.namelist() if n.startswith("images_background/Greek/")]
        z.extractall(tmp_path, members)
    small = load_dataset(f"omniglot:{tmp_path}", image_size=20)
    assert small.images.shape == ((24 + 20) * 20, 20, 20, 1)
    assert len(small.class_names) == 44


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_split_by_their_own_train_and_test_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    train_x, test_x = rng.integers(0, 256, (30, 12, 12)), rng.integers(0, 256, (20, 12, 12))
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(30) % 3, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(20) % 3, gz)
    data = load_dataset(f"idx:{tmp_path}")
    assert data.images.shape == (50, 12, 12, 1)
    assert np.array_equal(data.images[:30, :, :, 0], train_x)
    assert list(data.split) == [TRAIN] * 30 + [TEST] * 20
    by_class = load_dataset(f"idx:{tmp_path}", split="classes")
    assert {len(np.unique(by_class.true_labels()[by_class.split == s])) for s in (TRAIN, TEST)} == {1, 2}


def test_truncated_idx_file_is_refused_by_name(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 5, 5)), False)
    broken = tmp_path / "train-images-idx3-ubyte"
    broken.write_bytes(broken.read_bytes()[:-7])
    with pytest.raises(CactusError, match="train-images-idx3-ubyte.*bytes follow"):
        load_dataset(f"idx:{tmp_path}")


def test_folder_of_class_subfolders_reads_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    for c in range(4):
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"class{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (20, 16, 16, 1)
    assert data.class_names == ("class0", "class1", "class2", "class3")
    assert np.array_equal(np.bincount(data.true_labels()), [5, 5, 5, 5])
    resized = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert resized.images.shape == (20, 8, 8, 1)


@pytest.mark.parametrize("what", ["image", "class folder"])
def test_folder_dataset_refuses_links_that_leave_it(tmp_path, what):
    """A symlink inside the dataset folder must not make cactus read files outside it."""
    outside, root = tmp_path / "outside", tmp_path / "data"
    for folder in (outside, root / "a", root / "b"):
        folder.mkdir(parents=True)
    pixels = np.zeros((8, 8), dtype=np.uint8)
    for folder in (outside, root / "a", root / "b"):
        Image.fromarray(pixels).save(folder / "0.png")
    inner = root / "a" / "inner.png"
    inner.symlink_to(root / "b" / "0.png")  # a link that stays inside is fine
    assert load_dataset(f"folder:{root}").images.shape == (3, 8, 8, 1)
    if what == "image":
        (root / "a" / "secret.png").symlink_to(outside / "0.png")
    else:
        (root / "c").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CactusError, match="outside the dataset folder"):
        load_dataset(f"folder:{root}")

def test_npz_and_h5_arrays_with_and_without_labels(tmp_path):
    x = np.random.default_rng(2).random((40, 10, 10, 3))
    y = np.repeat(np.arange(10), 4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = (x * 255).astype(np.uint8)
    from_npz = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert from_npz.images.shape == (40, 10, 10, 3) and from_npz.images.dtype == np.uint8
    assert np.array_equal(from_npz.images, np.round(x * 255).astype(np.uint8))
    assert sorted(np.bincount(from_npz.split)) == [4, 12, 24]  # 6 / 1 / 3 classes of 4 images
    from_h5 = load_dataset(f"h5:{tmp_path / 'd.h5'}")
    assert (from_h5.split == TRAIN).all() and not from_h5.has_labels
    with pytest.raises(CactusError, match="has no labels"):
        from_h5.true_labels()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mnist", "unknown dataset kind 'mnist'"),
        ("omniglot", "needs a path"),
        ("npz:/no/such/file.npz", "does not exist"),
        ("digits:/x", "takes no path"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(CactusError, match=message):
        load_dataset(spec)


def test_npz_with_bad_shapes_or_values_is_refused(tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros((5, 7)))
    np.savez(tmp_path / "nan.npz", x=np.full((5, 4, 4), np.nan))
    np.savez(tmp_path / "noy.npz", z=np.zeros((5, 4, 4)))
    with pytest.raises(CactusError, match="shape"):
        load_dataset(f"npz:{tmp_path / 'flat.npz'}")
    with pytest.raises(CactusError, match="NaN"):
        load_dataset(f"npz:{tmp_path / 'nan.npz'}")
    with pytest.raises(CactusError, match="no array named 'x'"):
        load_dataset(f"npz:{tmp_path / 'noy.npz'}")


def test_digits_default_split_holds_out_half_the_images():
    digits = load_dataset("digits")
    assert digits.images.shape == (1797, 8, 8, 1)
    assert abs((digits.split == TEST).sum() - 898) <= 1
    assert len(np.unique(digits.true_labels()[digits.split == TEST])) == 10
