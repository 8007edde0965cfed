"""Sharded clustering: `cactus cluster --shard I/N` then `cactus cluster merge` equals one unsharded run."""

from __future__ import annotations

import json

import numpy as np
import pytest


def cli(*args: str):
    """``cactus ARGS`` in this process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def embed_file(tmp_path_factory):
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed

    path = tmp_path_factory.mktemp("embed") / "embeddings.h5"
    run_embed(path, DataRef("digits"), "pca", {"dim": 16})
    return path


CLUSTER = ("-k", "25", "-p", "7", "--seed", "5")


@pytest.fixture(scope="module")
def shards(embed_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for index in range(3):
        path = folder / f"part.shard{index}.h5"
        result = cli("cluster", embed_file, *CLUSTER, "--shard", f"{index}/3", "-o", path, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["partitions"] == len(range(7)[index::3])
        paths.append(path)
    return paths


def test_shards_merged_equal_the_unsharded_artifact(embed_file, shards, tmp_path):
    from cactus.core.store import read_artifact

    whole = cli("cluster", embed_file, *CLUSTER, "-o", tmp_path / "whole.h5", "--json")
    merged = cli("cluster", "merge", *reversed(shards), "-o", tmp_path / "merged.h5", "--json")
    assert whole.exit_code == 0 and merged.exit_code == 0, merged.stderr
    a, b = read_artifact(tmp_path / "whole.h5"), read_artifact(tmp_path / "merged.h5")
    assert b.stage == a.stage == "cluster"
    assert b.config == a.config and b.inputs == a.inputs and b.key == a.key == json.loads(merged.stdout)["key"]
    assert sorted(b.arrays) == sorted(a.arrays) == ["labels", "rows"]
    np.testing.assert_array_equal(b.array("labels"), a.array("labels"))
    np.testing.assert_array_equal(b.array("rows"), a.array("rows"))
    assert b.attrs["data"] == a.attrs["data"]
    # The merged artifact is the unsharded one: the cluster stage finds it up to date.
    again = cli("cluster", embed_file, *CLUSTER, "-o", tmp_path / "merged.h5", "--json")
    assert json.loads(again.stdout)["skipped"] is True


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_merge_refuses_missing_duplicate_and_foreign_shards(embed_file, shards, tmp_path):
    out = tmp_path / "merged.h5"
    one_line_error(cli("cluster", "merge", shards[0], shards[2], "-o", out), "shards 1/3 are missing")
    one_line_error(cli("cluster", "merge", shards[0], shards[1], shards[1], shards[2], "-o", out), "given twice")
    other = tmp_path / "other.shard1.h5"
    made = cli("cluster", embed_file, "-k", "20", "-p", "7", "--seed", "5", "--shard", "1/3", "-o", other)
    assert made.exit_code == 0
    one_line_error(cli("cluster", "merge", shards[0], other, shards[2], "-o", out), "another configuration")
    four = tmp_path / "four.shard1.h5"
    assert cli("cluster", embed_file, *CLUSTER, "--shard", "1/4", "-o", four).exit_code == 0
    one_line_error(cli("cluster", "merge", shards[0], four, shards[2], "-o", out), "is one of 3")
    one_line_error(cli("cluster", "merge", embed_file, "-o", out), "expected a 'cluster-shard' artifact")
    assert not out.exists()


def test_merge_refuses_shards_of_another_embedding(shards, tmp_path):
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed

    run_embed(tmp_path / "e2.h5", DataRef("digits"), "pca", {"dim": 12})
    foreign = tmp_path / "foreign.shard2.h5"
    assert cli("cluster", tmp_path / "e2.h5", *CLUSTER, "--shard", "2/3", "-o", foreign).exit_code == 0
    one_line_error(cli("cluster", "merge", *shards[:2], foreign, "-o", tmp_path / "m.h5"), "another embedding")


@pytest.mark.parametrize("shard", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_option_is_a_usage_error(embed_file, tmp_path, shard):
    result = cli("cluster", embed_file, "--shard", shard, "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "--shard" in result.stderr


def test_more_shards_than_partitions_is_refused(embed_file, tmp_path):
    one_line_error(cli("cluster", embed_file, "-p", "2", "--shard", "2/3", "-o", tmp_path / "x.h5"),
                   "more shards than the 2 partitions")


def test_streamed_clustering_equals_in_memory_when_the_sample_covers_every_row(embed_file, tmp_path, monkeypatch):
    from cactus.core.store import read_artifact
    from cactus.stages import cluster as stage

    stage.run_cluster(tmp_path / "memory.h5", embed_file, clusters=25, partitions=3, seed=2)
    monkeypatch.setattr(stage, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(stage, "CHUNK_ROWS", 100)  # many chunks
    stage.run_cluster(tmp_path / "streamed.h5", embed_file, clusters=25, partitions=3, seed=2)
    a, b = read_artifact(tmp_path / "memory.h5"), read_artifact(tmp_path / "streamed.h5")
    assert a.key == b.key
    np.testing.assert_array_equal(a.array("labels"), b.array("labels"))
    np.testing.assert_array_equal(a.array("rows"), b.array("rows"))


def test_streamed_clustering_fits_a_sample_and_labels_every_row(embed_file, tmp_path, monkeypatch):
    from cactus.core.store import read_artifact
    from cactus.stages import cluster as stage

    monkeypatch.setattr(stage, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(stage, "POINTS_PER_CENTROID", 10)  # 20 clusters x 10 = 200 of the 899 rows
    stage.run_cluster(tmp_path / "sampled.h5", embed_file, clusters=20, partitions=2, seed=2, min_clusters=2)
    artifact = read_artifact(tmp_path / "sampled.h5")
    assert artifact.config["train_sample"] == 200
    labels = artifact.array("labels")
    assert labels.shape == (2, 899) and len(np.unique(labels[0][labels[0] >= 0])) >= 15
