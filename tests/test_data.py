"""Dataset loaders on real files (Omniglot) and on files the tests write (IDX, folder, npz, h5)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

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


# ---------------------------------------------------------------- folders: layouts, colour, cache

def _photo(rng: np.random.Generator, size: tuple[int, int], colour: bool = True) -> Image.Image:
    """A smooth random picture (JPEG-friendly) of ``size`` (width, height)."""
    small = rng.integers(0, 256, (4, 4, 3) if colour else (4, 4), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _split_folder(root, counts=(("train", 3), ("val", 1), ("test", 2)), per_class=4, size=(12, 12)):
    rng = np.random.default_rng(0)
    for split, n_classes in counts:
        for c in range(n_classes):
            folder = root / split / f"{split}_class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                _photo(rng, size).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)


def test_folder_with_train_val_test_subfolders_uses_them_as_the_split(tmp_path):
    _split_folder(tmp_path)
    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (24, 12, 12, 3) and data.images.dtype == np.uint8
    names = np.asarray(data.class_names)[data.true_labels()]
    for split, prefix in ((TRAIN, "train_"), (VAL, "val_"), (TEST, "test_")):
        assert all(n.startswith(prefix) for n in names[data.split == split])
    assert [int((data.split == s).sum()) for s in (TRAIN, VAL, TEST)] == [12, 4, 8]
    assert data.split_rule == "files (the folder's train/ val/ test/ sub-folders: 3 / 1 / 2 classes)"
    assert data.describe()["split_rule"] == data.split_rule
    assert load_dataset(f"folder:{tmp_path}", split="files").split_rule == data.split_rule
    # --split classes ignores the folders: a seeded 60 / 10 / 30 % split of all 6 classes
    by_class = load_dataset(f"folder:{tmp_path}", split="classes")
    assert by_class.split_rule.startswith("classes (seed 0: 4 / 0 / 2)")


def test_split_folders_without_val_and_a_class_in_two_of_them(tmp_path):
    _split_folder(tmp_path, counts=(("train", 2), ("test", 2)))
    (tmp_path / "train" / "test_class0").mkdir()
    _photo(np.random.default_rng(1), (12, 12)).save(tmp_path / "train" / "test_class0" / "x.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert (data.split == VAL).sum() == 0
    assert len(data.class_names) == 4  # the shared name is one class
    assert data.split_rule.endswith("3 / 0 / 2 classes; 1 classes in more than one of them)")


def test_a_plain_folder_with_a_class_called_train_keeps_the_class_split(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("train", "test", "val"):
        (tmp_path / name).mkdir()
        for i in range(3):
            _photo(rng, (10, 10), colour=False).save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.class_names == ("test", "train", "val")
    assert data.images.shape == (9, 10, 10, 1)
    assert data.split_rule.startswith("classes (seed 0:")


def test_one_colour_image_makes_the_whole_folder_rgb(tmp_path):
    rng = np.random.default_rng(3)
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            _photo(rng, (9, 9), colour=False).save(tmp_path / f"c{c}" / f"{i}.png")
    grey = load_dataset(f"folder:{tmp_path}")
    assert grey.images.shape == (6, 9, 9, 1)
    _photo(rng, (9, 9), colour=True).save(tmp_path / "c1" / "3.png")  # the last file decoded
    colour = load_dataset(f"folder:{tmp_path}")
    assert colour.images.shape == (7, 9, 9, 3)
    # the grey images become three equal channels with their grey values
    assert np.array_equal(colour.images[:6], np.repeat(grey.images, 3, axis=3))


def test_resizing_photos_keeps_their_colours(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "a").mkdir()
    originals = []
    for i, size in enumerate([(40, 40), (64, 48), (33, 70)]):
        picture = _photo(rng, size)
        picture.save(tmp_path / "a" / f"{i}.{'jpg' if i % 2 else 'png'}", quality=95)
        originals.append(np.asarray(picture, dtype=np.float64))
    with pytest.raises(CactusError, match="differ in size.*pass --image-size"):
        load_dataset(f"folder:{tmp_path}")
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.images.shape == (3, 16, 16, 3)
    for image, original in zip(data.images, originals, strict=True):
        assert np.abs(image.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 4  # of 255


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder, used even for tiny folders."""
    import cactus.datasets.dataset as dataset_module

    monkeypatch.setenv("CACTUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_module, "CACHE_MIN_IMAGES", 0)
    return tmp_path / "cache"


def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path, cache, monkeypatch):
    import cactus.datasets.dataset as dataset_module

    root = tmp_path / "data"
    _split_folder(root)
    first = load_dataset(f"folder:{root}")
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".meta.npz") and entries[1].endswith(".npy")
    assert not any(name.startswith(".") for name in entries)  # no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds the folder")

    monkeypatch.setattr(dataset_module, "decode_folder", no_decoding)
    again = load_dataset(f"folder:{root}")
    assert np.array_equal(again.images, first.images) and np.array_equal(again.split, first.split)
    assert again.fingerprint() == first.fingerprint() and again.split_rule == first.split_rule
    assert isinstance(again.images.base, np.memmap)  # memory-mapped, not read into memory
    assert again.images.flags.writeable  # copy-on-write: torch.as_tensor takes it without a warning


def test_the_cache_follows_the_files_and_the_image_size(tmp_path, cache):
    root = tmp_path / "data"
    _split_folder(root)
    load_dataset(f"folder:{root}")
    load_dataset(f"folder:{root}", image_size=8)
    assert len(list(cache.glob("*.npy"))) == 2  # one entry per image size
    changed = root / "train" / "train_class0" / "0.jpg"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(changed)
    data = load_dataset(f"folder:{root}")
    assert data.images[0].max() == 0  # the new content, not the cached one
    assert len(list(cache.glob("*.npy"))) == 2  # the stale entry of that size was replaced
    expected = np.array(data.images)
    for broken in cache.glob("*.npy"):
        broken.unlink()  # a new file, not the mapped one truncated under the array above
        broken.write_bytes(b"not an array")
    assert np.array_equal(load_dataset(f"folder:{root}").images, expected)  # a broken entry is a miss


def test_an_unwritable_cache_is_skipped(tmp_path, cache, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CACTUS_CACHE_DIR", str(blocker / "cache"))
    _split_folder(tmp_path / "data")
    assert load_dataset(f"folder:{tmp_path / 'data'}").images.shape == (24, 12, 12, 3)


def test_fingerprint_hashes_shape_images_and_split_without_copying_them():
    import hashlib

    digits = load_dataset("digits")
    expected = hashlib.sha256()
    expected.update(str(digits.images.shape).encode())
    expected.update(digits.images.tobytes())
    expected.update(digits.split.tobytes())
    assert digits.fingerprint() == expected.hexdigest()


MINIIMAGENET = Path.home() / ".cache" / "cactus" / "data" / "miniimagenet"


@pytest.mark.skipif(not (MINIIMAGENET / "train").is_dir(), reason=f"miniImageNet is not built at {MINIIMAGENET}")
def test_miniimagenet_folder_has_the_standard_64_16_20_class_split():
    data = load_dataset(f"folder:{MINIIMAGENET}")
    assert data.images.shape == (60000, 84, 84, 3) and data.images.dtype == np.uint8
    labels = data.true_labels()
    assert set(np.bincount(labels)) == {600}
    classes = [set(np.unique(labels[data.split == s]).tolist()) for s in (TRAIN, VAL, TEST)]
    assert [len(c) for c in classes] == [64, 16, 20]
    assert not (classes[0] & classes[1] or classes[0] & classes[2] or classes[1] & classes[2])
    assert data.split_rule == "files (the folder's train/ val/ test/ sub-folders: 64 / 16 / 20 classes)"
    test_names = {data.class_names[c] for c in classes[2]}
    assert test_names == {p.name for p in (MINIIMAGENET / "test").iterdir()}
    # PROVENANCE.md's pixel statistics of the 64 train classes: mean [120.10, 114.82, 103.35]
    train = data.indices(TRAIN)
    total = np.zeros(3)
    for start in range(0, len(train), 4000):
        pixels = data.images[train[start : start + 4000]].reshape(-1, 3)
        total += [np.ascontiguousarray(pixels[:, c]).sum(dtype=np.uint64) for c in range(3)]
    assert np.allclose(total / (len(train) * 84 * 84), [120.10, 114.82, 103.35], atol=0.01)
