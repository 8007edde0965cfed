"""Bad datasets given to ``cactus embed --data``: each gets one clean error line and writes nothing.

`python bench/bad_inputs.py` adds these cases to the table in bench/results/bad_inputs.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _class_folders(root: Path, sizes=((8, 8), (8, 8))) -> None:
    for c, size in enumerate(sizes):
        (root / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.zeros(size, dtype=np.uint8)).save(root / f"c{c}" / "0.png")


def link_outside(root: Path) -> str:
    _class_folders(root / "data")
    (root / "secret").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "secret" / "key.png")
    (root / "data" / "c0" / "1.png").symlink_to(root / "secret" / "key.png")
    return f"folder:{root / 'data'}"


def split_folder_linked_outside(root: Path) -> str:
    _class_folders(root / "data" / "train")
    _class_folders(root / "elsewhere")
    (root / "data" / "test").symlink_to(root / "elsewhere", target_is_directory=True)
    return f"folder:{root / 'data'}"


def truncated_jpeg(root: Path) -> str:
    _class_folders(root / "data")
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(root / "data" / "c1" / "1.jpg", quality=90)
    whole = (root / "data" / "c1" / "1.jpg").read_bytes()
    (root / "data" / "c1" / "1.jpg").write_bytes(whole[: len(whole) // 2])
    return f"folder:{root / 'data'}"


def not_an_image(root: Path) -> str:
    _class_folders(root / "data")
    (root / "data" / "c1" / "1.png").write_bytes(np.random.default_rng(0).bytes(300))
    return f"folder:{root / 'data'}"


def decompression_bomb(root: Path) -> str:
    _class_folders(root / "data")
    Image.new("L", (9000, 9000)).save(root / "data" / "c1" / "big.png")  # 81 MP, a few KB on disk
    return f"folder:{root / 'data'}"


def mixed_sizes(root: Path) -> str:
    _class_folders(root / "data", sizes=((8, 8), (12, 10)))
    return f"folder:{root / 'data'}"


def empty_folder(root: Path) -> str:
    (root / "data" / "c0").mkdir(parents=True)
    return f"folder:{root / 'data'}"


def symlink_loop(root: Path) -> str:
    _class_folders(root / "data")
    (root / "data" / "c1" / "loop.png").symlink_to(root / "data" / "c1" / "loop.png")
    return f"folder:{root / 'data'}"


def one_class(root: Path) -> str:
    _class_folders(root / "data", sizes=((8, 8),))
    return f"folder:{root / 'data'}"


def npz_without_images(root: Path) -> str:
    np.savez(root / "d.npz", labels=np.arange(10))
    return f"npz:{root / 'd.npz'}"


def npz_with_nan_pixels(root: Path) -> str:
    x = np.random.default_rng(0).random((20, 8, 8))
    x[3, 2, 2] = np.nan
    np.savez(root / "d.npz", x=x)
    return f"npz:{root / 'd.npz'}"


def missing_path(root: Path) -> str:
    return f"folder:{root / 'nowhere'}"


def unknown_kind(root: Path) -> str:
    return f"tarball:{root}"


DATASET_CASES: list[tuple[str, Callable[[Path], str], str]] = [
    ("an image symlinked from outside the folder", link_outside, "outside the dataset folder"),
    ("a test/ split folder symlinked from outside", split_folder_linked_outside, "outside the dataset folder"),
    ("a .png file of random bytes", not_an_image, "not a readable image"),
    ("a JPEG cut off halfway", truncated_jpeg, "not a readable image"),
    ("a 9000 x 9000 PNG (decompression bomb)", decompression_bomb, "image too large"),
    ("images of different sizes, no --image-size", mixed_sizes, "differ in size"),
    ("class folders without images", empty_folder, "no images"),
    ("a loop.png -> loop.png symlink", symlink_loop, "loop.png"),
    ("a folder with one class (no meta-train split)", one_class, "class"),
    ("an .npz without an image array", npz_without_images, "npz"),
    ("an .npz with a NaN pixel", npz_with_nan_pixels, "NaN"),
    ("a folder that does not exist", missing_path, "nowhere"),
    ("an unknown dataset kind", unknown_kind, "tarball"),
]


def embed_outcome(root: Path, build: Callable[[Path], str]) -> tuple[str, str, object]:
    """Build the bad dataset under ``root``; run ``cactus embed`` on it. Returns (spec, stderr, result)."""
    from click.testing import CliRunner

    from cli import main

    spec = build(root)
    result = CliRunner().invoke(main, ["embed", "--data", spec, "-o", str(root / "out.h5"), "--dim", "4"])
    return spec, result.stderr, result


@pytest.mark.parametrize("description, build, expected", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_bad_dataset_gets_one_clean_line(tmp_path, description, build, expected):
    _, stderr, result = embed_outcome(tmp_path, build)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cactus: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert expected in errors[0], errors[0]
    assert not (tmp_path / "out.h5").exists()
