"""The default recipe of ``cactus run``: the planner's choices, the budget parser, threads, and budgeted runs."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from cactus.core.device import allocated_threads
from cactus.core.errors import CactusError
from cactus.stages.planner import Budget, DataShape, Throughput, parse_budget, plan, recipe
from tests.conftest import run_cli

DIGITS = DataShape(899, 8, 8, 1)
OMNIGLOT_LIKE = DataShape(22000, 28, 28, 1)
PHOTOS = DataShape(38400, 84, 84, 3)


# -- the planner's choices ------------------------------------------------------------------------------------


def test_omniglot_sized_data_gets_our_best_recipe_at_budget_cpu():
    values = plan(OMNIGLOT_LIKE, Budget("cpu")).values
    assert values == {"method": "contrastive", "dim": 128, "epochs": 11, "clusters": 500, "partitions": 100,
                      "ways": 20, "shots": 1, "queries": 15, "min_cluster_size": 16, "algo": "protonets",
                      "iterations": 2750, "meta_lr": 1e-4, "init_from_encoder": True}


def test_on_omniglot_sized_data_the_default_is_the_contrastive_protonets_preset_trained_longer():
    """The hour of ``cpu`` fits the paper's caps there: more encoder epochs and iterations than the preset's
    cpu setting (its quick 3 epochs and 2000 iterations), and otherwise the same recipe."""
    from cactus.stages.presets import preset_values
    from embeddings.contrastive import ContrastiveEncoder

    values = plan(OMNIGLOT_LIKE, Budget("cpu")).values
    preset = preset_values("contrastive-protonets", "cpu")
    assert preset.pop("quick") and values.pop("epochs") > ContrastiveEncoder.quick_epochs
    assert values.pop("iterations") > preset.pop("iterations")
    shared = set(values) & set(preset)
    assert shared >= {"method", "dim", "clusters", "partitions", "ways", "shots", "queries", "meta_lr",
                      "init_from_encoder"}
    assert {k: values[k] for k in shared} == {k: preset[k] for k in shared}


def test_small_low_resolution_data_gets_pca_fewer_clusters_ways_and_iterations():
    values = plan(DIGITS, Budget("cpu")).values
    assert values["method"] == "pca" and "epochs" not in values and values["init_from_encoder"] is False
    assert values["clusters"] == 899 // 40 and values["ways"] == 5 and values["meta_lr"] == 1e-3
    assert values["min_cluster_size"] == values["shots"] + values["queries"] <= 899 // values["clusters"]
    assert values["iterations"] == 450  # 40 passes over the 899 images in 5-way 16-image pseudo-tasks


def test_a_small_dataset_at_conv_resolution_gets_enough_encoder_steps():
    values = plan(DataShape(900, 28, 28, 1), Budget("cpu")).values
    assert values["method"] == "contrastive" and values["epochs"] * (900 // 256) >= 255  # not 3 epochs of 3 steps


def test_big_colour_data_is_shrunk_to_an_hour_at_budget_cpu():
    planned = plan(PHOTOS, Budget("cpu"), given={"image_size": 84})
    assert planned.values["method"] == "contrastive" and planned.values["clusters"] == 500
    assert planned.values["epochs"] < recipe(PHOTOS, "paper")["epochs"]
    assert planned.seconds <= 3600
    assert plan(DataShape(38400, 28, 28, 1), Budget("cpu")).values["epochs"] == 10  # grey 28x28: the paper's


def test_too_few_images_plan_nothing_and_keep_the_stage_defaults():
    assert set(plan(DataShape(50, 28, 28, 1), Budget("cpu")).values) == {"iterations"}


def test_budgets_are_ordered_quick_cpu_paper():
    for shape in (DataShape(900, 28, 28, 1), OMNIGLOT_LIKE, PHOTOS):
        quick, paper = recipe(shape, "quick"), recipe(shape, "paper")
        cpu = plan(shape, Budget("cpu")).values
        for name in ("epochs", "iterations", "partitions"):
            assert quick[name] <= cpu[name] <= paper[name], (shape, name)


@pytest.mark.parametrize("shape", [DataShape(900, 28, 28, 1), OMNIGLOT_LIKE, PHOTOS], ids=str)
def test_a_time_budget_fits_the_measured_throughput_and_a_longer_one_trains_no_less(shape):
    speed = Throughput(encoder_image=2e-3 * shape.height * shape.width / 784, meta_iteration=0.4, measured=True)
    previous = None
    for seconds in (600, 1200, 3600, 4 * 3600):
        planned = plan(shape, Budget("time", seconds), speed, spent=5)
        if not planned.notes:
            assert planned.seconds <= seconds * 0.95, (seconds, planned.estimate)
        if previous is not None:  # as big images or bigger, and no fewer pixels through either learner
            side, before = planned.shape.height, previous.shape.height
            assert side >= before
            assert planned.values["epochs"] * side**2 >= previous.values["epochs"] * before**2
            assert planned.values["iterations"] * side**2 >= previous.values["iterations"] * before**2
        previous = planned


def test_on_omniglot_sized_data_cpu_20m_and_60m_plan_the_same_recipe():
    """With the throughput the 20m / 60m Omniglot runs measured (BENCHMARKS.md), the time budgets reach the
    paper's caps as ``cpu`` does under the cost model: the three plans are one recipe."""
    measured = Throughput(encoder_image=0.000985, meta_iteration=0.0849, measured=True)
    cpu = plan(OMNIGLOT_LIKE, Budget("cpu")).values
    for seconds in (1200, 3600):
        assert plan(OMNIGLOT_LIKE, Budget("time", seconds), measured, spent=5).values == cpu


def test_big_photos_train_smaller_when_an_hour_leaves_the_encoder_few_epochs():
    """Photos train at a smaller ``train_size`` and keep their resolution for the embedding and the evaluation,
    whose cost at that resolution is set aside; line drawings are resized instead."""
    full = plan(PHOTOS, Budget("cpu"), given={"image_size": 84})  # the user's size is kept
    assert {"image_size", "train_size"}.isdisjoint(full.values) and full.resized_from is None
    assert full.values["epochs"] == 1
    planned = plan(PHOTOS, Budget("cpu"))
    cap = recipe(PHOTOS, "paper")["epochs"]
    assert planned.values["train_size"] == planned.shape.height == 42 and planned.resized_from == PHOTOS
    assert "image_size" not in planned.values
    assert cap > planned.values["epochs"] >= cap / 2 and planned.seconds <= 3600
    assert "84x84x3 (trained at 42x42)" in planned.summary()
    resized = plan(replace(PHOTOS, drawing=True), Budget("cpu"))
    assert resized.values["image_size"] == 42 and "train_size" not in resized.values
    assert "42x42x3 (resized from 84x84)" in resized.summary()
    # evaluating at 84x84 costs what evaluating 42x42 images does not: fewer epochs and iterations are left
    assert planned.estimate["evaluate"] > 3 * resized.estimate["evaluate"]
    assert planned.values["iterations"] < resized.values["iterations"]
    for small in (OMNIGLOT_LIKE, DIGITS, DataShape(38400, 32, 32, 3)):  # epochs to spare: never resized
        assert {"image_size", "train_size"}.isdisjoint(plan(small, Budget("cpu")).values)
    for given in ({"epochs": 1}, {"train_size": 60}):
        assert {"image_size", "train_size"}.isdisjoint(plan(PHOTOS, Budget("cpu"), given=given).values)
    assert {"image_size", "train_size"}.isdisjoint(plan(PHOTOS, Budget("paper")).values)


def test_what_the_user_gives_wins_and_the_recipe_follows_it():
    values = plan(OMNIGLOT_LIKE, Budget("cpu"), given={"method": "pca", "ways": 5, "iterations": 77}).values
    assert values["method"] == "pca" and "epochs" not in values and values["ways"] == 5
    assert values["init_from_encoder"] is False and values["meta_lr"] == 1e-3  # PCA has no backbone
    assert values["iterations"] == 77
    assert plan(OMNIGLOT_LIKE, Budget("cpu"), given={"algo": "maml"}).values["init_from_encoder"] is False


def test_the_plan_prints_one_line_and_one_table():
    planned = plan(OMNIGLOT_LIKE, Budget("time", 2700))
    assert "\n" not in planned.summary() and "(45m)" in planned.summary()
    table = planned.table()
    assert "est. total" in table and "clusters" in table and "cost model" in table


# -- budgets and threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           ("120", 120), (" 45M ", 2700), ("1d", 86400)])
def test_time_budgets_parse(text, seconds):
    assert parse_budget(text) == Budget("time", seconds)


@pytest.mark.parametrize("text", ["soon", "45 minutes", "-5m", "0s", "m", "45m30", "40d"])
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(CactusError, match="--budget"):
        parse_budget(text)


def test_named_budgets_and_the_slurm_job_end_time():
    assert [parse_budget(n).name for n in ("quick", "cpu", "paper")] == ["quick", "cpu", "paper"]
    assert parse_budget("job", {"SLURM_JOB_END_TIME": "10900"}, now=10000) == Budget("time", 900)
    with pytest.raises(CactusError, match="SLURM_JOB_END_TIME"):
        parse_budget("job", {})


def test_threads_come_from_the_allocation():
    assert allocated_threads({"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}) == (3, "OMP_NUM_THREADS")
    assert allocated_threads({"SLURM_CPUS_PER_TASK": "8"}) == (8, "SLURM_CPUS_PER_TASK")
    threads, source = allocated_threads({"OMP_NUM_THREADS": "zero"})
    assert source in ("affinity", "cpu_count") and threads >= 1


# -- cactus run -----------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "--dry-run", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    table = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("est."))
    assert table["method"].strip() == "pca" and table["clusters"].strip() == "22" and "est. total" in result.stdout
    plan_lines = [line for line in result.stderr.splitlines() if "plan (cpu)" in line]
    assert len(plan_lines) == 1 and "1 threads (OMP_NUM_THREADS)" in plan_lines[0] and "device cpu" in plan_lines[0]
    assert not out.exists()


def test_dry_run_refuses_an_encoder_setting_the_run_would_fail_on(tmp_path):
    """The planned encoder is built (not trained) before the dry run answers: no half-hour run dies at embed."""
    out = tmp_path / "run"
    result = run_cli("run", "--method", "learned-rule", "--batch-size", "1", "--dry-run", "--out-dir", str(out))
    assert result.returncode == 1 and "--batch-size 1" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_dry_run_shows_a_given_option_not_the_planned_one():
    result = run_cli("run", "--method", "contrastive", "--dim", "32", "--dry-run")
    assert result.returncode == 0, result.stderr
    table = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("est."))
    assert table["dim"].strip() == "32"


def test_deepcluster_widens_its_last_block_for_a_wide_pca():
    """The miniImageNet preset's 256-d PCA: the conv features default to twice dim (the PCA reduces)."""
    from embeddings.deepcluster import DeepClusterEncoder

    assert DeepClusterEncoder().feature_channels == 128
    assert DeepClusterEncoder(dim=256).feature_channels == 512
    assert DeepClusterEncoder(dim=32, features=64).feature_channels == 64


def test_a_preset_with_a_time_budget_is_a_one_line_error(tmp_path):
    result = run_cli("run", "--preset", "cactus-omniglot", "--budget", "45m", "--out-dir", str(tmp_path))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--budget" in result.stderr and not list(tmp_path.iterdir())


BUDGET_S = 60


def test_a_budgeted_run_on_digits_ends_within_its_budget_and_shows_the_floors(tmp_path):
    started = time.monotonic()
    result = run_cli("run", "--budget", f"{BUDGET_S}s", "--out-dir", str(tmp_path), "--eval-tasks", "300", "--json",
                     env={"OMP_NUM_THREADS": "2"})
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    planned = summary["plan"]
    assert planned["throughput"]["measured"] and summary["budget"] == f"{BUDGET_S}s"
    learner, knn = summary["evaluation"]
    pixels = summary["floors"]["pixels_knn"]
    assert {(r["ways"], r["shots"]) for r in learner["results"]} == {(5, 1), (5, 5), (10, 1), (10, 5)}
    assert len(pixels["results"]) == 4 and pixels["artifact"].endswith("pixels.h5")
    assert summary["floors"]["embedding"] == knn and knn["learner"] == "knn"
    # shared machine: 15% over the budget at most (the plan keeps a 10% margin of its own)
    if wall >= BUDGET_S * 1.15 and planned["notes"]:  # the probe found the machine too slow for the smallest recipe
        assert sum(planned["estimate"].values()) > BUDGET_S * 0.9
        pytest.skip(f"machine too loaded for a {BUDGET_S}s budget: {planned['notes']} (ran {wall:.0f} s)")
    assert wall < BUDGET_S * 1.15, (wall, planned)


def _big_grey_npz(path, drawing: bool = False) -> str:
    """600 images of 96x96 (60 classes): at that size no budget of a minute gives the encoder its epochs.
    ``drawing``: ink on paper (every pixel black or white) instead of mid-grey photos."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 10)
    images = (rng.random((600, 96, 96)) * 60 + labels[:, None, None] * 3).astype(np.uint8)
    if drawing:
        images = np.where(images > 100, 255, 0).astype(np.uint8)
    np.savez(path, x=images, y=labels)
    return f"npz:{path}"


@pytest.mark.parametrize("drawing", [False, True])
def test_a_short_budget_on_big_images_plans_smaller_images(tmp_path, drawing):
    data = _big_grey_npz(tmp_path / "big.npz", drawing)
    result = run_cli("run", "--data", data, "--budget", "40s", "--dry-run", "--out-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    table = dict(line.split(None, 1) for line in result.stdout.splitlines())
    if drawing:  # line drawings are resized
        side = int(table["image-size"])
        assert 28 <= side < 96 and f"{side}x{side}x1 (resized from 96x96)" in table["data"]
        assert "train-size" not in table
    else:  # photos train smaller and are embedded and evaluated at 96x96
        side = int(table["train-size"])
        assert 28 <= side < 96 and f"96x96x1 (trained at {side}x{side})" in table["data"]
        assert "image-size" not in table
    kept = run_cli("run", "--data", data, "--budget", "40s", "--image-size", "96", "--dry-run")
    assert kept.returncode == 0 and "image-size" not in kept.stdout and "resized" not in kept.stdout
    assert "train-size" not in kept.stdout


@pytest.mark.slow
def test_a_run_trains_and_evaluates_at_the_planned_size(tmp_path):
    import h5py

    data = _big_grey_npz(tmp_path / "big.npz")
    result = run_cli("run", "--data", data, "--budget", "40s", "--eval-tasks", "50", "--out-dir",
                     str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    side = json.loads(result.stdout)["plan"]["values"]["train_size"]
    with h5py.File(tmp_path / "run" / "embeddings.h5") as f:
        config = json.loads(f.attrs["config"])
        assert config["data"]["image_size"] is None and config["encoder"]["train_size"] == side
    with h5py.File(tmp_path / "run" / "learner.h5") as f:
        assert json.loads(f.attrs["config"])["learner"]["train_size"] == side
        assert json.loads(f.attrs["x_image_shape"]) == [96, 96, 1]  # evaluated at the data's own size
