"""Colour end to end: a tiny synthetic RGB folder through every stage, every encoder and both meta-learners.

The folder mixes PNG and JPEG files of several sizes in the ``train/ val/ test/`` layout, so it also
checks that ``--image-size`` brings them to one size and that the folders give the split. Every
run is as short as the options allow; the point is that 3-channel images flow everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from embeddings import REGISTRY

IMAGE_SIZE = 16
SPLITS = {"train": 4, "val": 1, "test": 3}  # classes per split folder
PER_CLASS = 8
SOURCE_SIZES = [(20, 20), (24, 18), (32, 32), (17, 23)]

# The quickest setting of each encoder through ``cactus embed`` (``load`` needs a file of
# embeddings; DeepCluster caps its k = 500 at one cluster per 10 of this folder's 32 training images).
ENCODER_OPTIONS: dict[str, list[str]] = {
    "pca": ["--dim", "8"],
    "contrastive": ["--quick", "--epochs", "1", "--batch-size", "16", "--dim", "8"],
    "acai": ["--quick", "--epochs", "1", "--batch-size", "16", "--dim", "8"],
    "bigan": ["--quick", "--epochs", "1", "--batch-size", "16", "--dim", "8"],
    "infogan": ["--quick", "--epochs", "1", "--batch-size", "16", "--dim", "8"],
    "learned-rule": ["--quick", "--steps", "2", "--width", "16", "--depth", "1"],
    "pixels": [],
    "deepcluster": ["--quick", "--epochs", "1", "--batch-size", "16", "--dim", "8", "--width", "8"],  # k from the data
}


def _write_rgb_folder(root: Path) -> None:
    """Each class a colour; each image that colour with noise and a bright square, PNG or JPEG."""
    rng = np.random.default_rng(0)
    n = 0
    for split, n_classes in SPLITS.items():
        for c in range(n_classes):
            folder = root / split / f"{split}{c}"
            folder.mkdir(parents=True)
            base = rng.integers(30, 226, 3)
            for i in range(PER_CLASS):
                width, height = SOURCE_SIZES[n % len(SOURCE_SIZES)]
                pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
                top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
                pixels[top : top + height // 3, left : left + width // 3] = 255
                Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if n % 2 else 'png'}", quality=90)
                n += 1


def _invoke(*args: str) -> dict:
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, f"cactus {' '.join(args)}:\n{result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rgb") / "data"
    _write_rgb_folder(root)
    return root


def test_the_rgb_folder_loads_as_three_channels_with_its_split(rgb_folder):
    from cactus.datasets.dataset import TEST, TRAIN, VAL, load_dataset

    data = load_dataset(f"folder:{rgb_folder}", image_size=IMAGE_SIZE)
    assert data.images.shape == (sum(SPLITS.values()) * PER_CLASS, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert [len(np.unique(data.true_labels()[data.split == s])) for s in (TRAIN, VAL, TEST)] == list(SPLITS.values())
    # the colour survives decoding and resizing: channels differ
    assert np.abs(data.images[..., 0].astype(int) - data.images[..., 2].astype(int)).mean() > 10


def test_every_encoder_embeds_rgb(rgb_folder, tmp_path):
    assert set(ENCODER_OPTIONS) == set(REGISTRY) - {"load"}, "a new encoder needs options here"
    for method, options in ENCODER_OPTIONS.items():
        out = tmp_path / f"{method}.h5"
        summary = _invoke("embed", "--data", f"folder:{rgb_folder}", "--image-size", str(IMAGE_SIZE),
                          "--method", method, *options, "--threads", "1", "-o", str(out))
        assert summary["stage"] == "embed"
        with h5py.File(out, "r") as artifact:
            embeddings = artifact["embeddings"][()]
            shapes = [artifact[name].shape for name in _arrays(artifact, "encoder/")]
        assert embeddings.shape[0] == sum(SPLITS.values()) * PER_CLASS, method
        assert np.isfinite(embeddings).all(), method
        # the encoder saw colour: a first convolution over 3 channels, or weights over all H * W * 3 pixels
        # (DeepCluster, as its paper does for colour, convolves the grey image's 2 Sobel gradients)
        channels = 2 if method == "deepcluster" else 3
        assert any((len(s) == 4 and s[1] == channels) or IMAGE_SIZE**2 * 3 in s for s in shapes), (method, shapes)


def test_deepcluster_fits_rgb(rgb_folder):
    from cactus.datasets.dataset import TRAIN, load_dataset
    from embeddings import encoder_class

    data = load_dataset(f"folder:{rgb_folder}", image_size=IMAGE_SIZE)
    train = data.images[data.indices(TRAIN)]
    encoder = encoder_class("deepcluster")(clusters=4, epochs=1, batch_size=16, dim=8, width=8, features=16,
                                           seed=0, device="cpu").fit(train)
    embeddings = encoder.transform(data.images)
    assert embeddings.shape == (len(data), 8) and np.isfinite(embeddings).all()


@pytest.mark.parametrize("algo", ["protonets", "maml"])
def test_cluster_tasks_meta_and_evaluate_on_rgb(rgb_folder, tmp_path, algo):
    embed = tmp_path / "embeddings.h5"
    _invoke("embed", "--data", f"folder:{rgb_folder}", "--image-size", str(IMAGE_SIZE), "--method", "pca",
            "--dim", "8", "-o", str(embed))
    partitions = tmp_path / "partitions.h5"
    _invoke("cluster", str(embed), "-k", "4", "-p", "2", "--min-cluster-size", "2", "-o", str(partitions))
    tasks = tmp_path / "tasks.h5"
    _invoke("tasks", str(partitions), "-n", "2", "-k", "1", "-q", "1", "--num-tasks", "20", "-o", str(tasks))
    learner = tmp_path / f"{algo}.h5"
    extra = ["--inner-steps", "1", "--test-inner-steps", "2", "--first-order"] if algo == "maml" else []
    _invoke("meta", str(tasks), "--algo", algo, "--filters", "8", "--iterations", "3", "--meta-batch", "2",
            "--validation", "none", *extra, "--threads", "1", "-o", str(learner))
    with h5py.File(learner, "r") as artifact:
        first_conv = [artifact[name] for name in _arrays(artifact, "weights/") if artifact[name].ndim == 4][0]
        assert first_conv.shape[1] == 3  # the first convolution takes three input channels
    report = _invoke("evaluate", str(learner), "--ways", "2", "--shots", "1", "--queries", "2", "--num-tasks", "10",
                     "--threads", "1")
    assert report["learner"] == algo
    [result] = report["results"]
    assert result["ways"] == 2 and result["shots"] == 1 and 0 <= result["accuracy"] <= 100


def _arrays(artifact: h5py.File, prefix: str) -> list[str]:
    """Names of the artifact's arrays under ``prefix``."""
    names: list[str] = []
    artifact.visit(lambda name: names.append(name) if isinstance(artifact[name], h5py.Dataset) else None)
    return [n for n in names if n.startswith(prefix)]


@pytest.mark.parametrize("budget, size, iterations", [("cpu", "42", "2000"), ("paper", "84", "60000")])
def test_the_miniimagenet_preset_plans_the_papers_protocol(rgb_folder, budget, size, iterations):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["run", "--preset", "cactus-miniimagenet", "--budget", budget,
                                       "--data", f"folder:{rgb_folder}", "--dry-run"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    for setting in ("method=deepcluster", "dim=256", "clusters=500", "partitions=50", "algo=maml", "ways=5",
                    "shots=1", "queries=5", "meta_batch=8", "filters=32", "downsample=pool", "inner_lr=0.05",
                    "inner_steps=5", "test_inner_steps=50", "eval_shots=(1, 5, 20, 50)", "eval_queries=15",
                    f"image_size={size}", f"iterations={iterations}"):
        assert re.search(rf"(: |, ){re.escape(setting)}(, |$)", line), setting


def test_the_miniimagenet_preset_runs_end_to_end_on_rgb(rgb_folder, tmp_path):
    """The preset's pipeline (DeepCluster on colour, MAML with max pooling), shrunk to seconds."""
    summary = _invoke("run", "--preset", "cactus-miniimagenet", "--data", f"folder:{rgb_folder}",
                      "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--width", "8", "--dim", "8",
                      "--clusters", "4", "--partitions", "2", "--min-cluster-size", "2", "--iterations", "3",
                      "--test-inner-steps", "2", "--ways", "3", "--eval-ways", "3",
                      "--eval-shots", "1", "--eval-queries", "2", "--eval-tasks", "10",
                      "--out-dir", str(tmp_path / "run"))
    learner = summary["evaluation"][0]
    assert learner["learner"] == "maml" and [r["shots"] for r in learner["results"]] == [1]
    assert 0 <= learner["results"][0]["accuracy"] <= 100
    with h5py.File(tmp_path / "run" / "embeddings.h5") as f:
        config = json.loads(f.attrs["config"])
    assert config["encoder"]["method"] == "deepcluster" and config["data"]["image_size"] == 16


def test_grey_is_pillows_luma_and_leaves_grey_images_alone():
    from cactus.datasets.dataset import to_grey

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    grey = to_grey(colour, chunk=2)  # several chunks
    assert grey.shape == (5, 7, 9, 1) and grey.dtype == np.uint8
    pillow = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in colour])[..., None]
    assert np.abs(grey.astype(int) - pillow).max() <= 1  # Pillow rounds its fixed-point sums
    assert to_grey(grey) is grey


def test_grey_option_loads_the_colour_folder_as_one_channel_and_is_recorded(rgb_folder, tmp_path):
    from cactus.stages.common import DataRef

    colour = DataRef(f"folder:{rgb_folder}", IMAGE_SIZE).load()
    grey = DataRef(f"folder:{rgb_folder}", IMAGE_SIZE, grey=True).load()
    assert colour.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and grey.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
    assert np.array_equal(grey.split, colour.split) and np.array_equal(grey.true_labels(), colour.true_labels())
    _invoke("embed", "--data", f"folder:{rgb_folder}", "--image-size", str(IMAGE_SIZE), "--grey", "--method",
            "pixels", "-o", str(tmp_path / "grey.h5"))
    with h5py.File(tmp_path / "grey.h5") as f:
        assert json.loads(f.attrs["config"])["data"]["grey"] is True
        assert list(f["encoder/input_shape"][()]) == [IMAGE_SIZE, IMAGE_SIZE, 1]
    assert "grey" not in DataRef("digits").as_dict()  # artifacts made without it keep their keys


def test_the_pixel_floor_of_large_images_is_scored_on_shrunk_ones(rgb_folder, tmp_path):
    from cactus.cli.run import pixel_floor
    from cactus.stages.common import DataRef
    from cactus.stages.configs import EmbedConfig, EvaluateConfig

    embed = EmbedConfig(data=DataRef(f"folder:{rgb_folder}", image_size=72), threads=1)
    evaluation = EvaluateConfig(ways=(2,), shots=(1,), queries=2, num_tasks=10, threads=1)
    report = pixel_floor(tmp_path / "pixels.h5", embed, evaluation, (72, 72, 3), force=False)
    assert report["image_size"] == 64 and len(report["results"]) == 1  # 72x72x3 is over 64x64x3 values
    with h5py.File(tmp_path / "pixels.h5", "r") as artifact:
        assert artifact["embeddings"].shape[1] == 64 * 64 * 3
    small = pixel_floor(tmp_path / "small.h5", replace(embed, data=DataRef(f"folder:{rgb_folder}", image_size=16)),
                        evaluation, (16, 16, 3), force=False)
    assert "image_size" not in small and len(small["results"]) == 1
