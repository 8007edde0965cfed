"""ProtoNets fine-tuning a trained encoder's backbone (--init-from): train, store, evaluate."""

from __future__ import annotations

import json

import numpy as np

from cactus.core.store import read_artifact
from cactus.stages.cluster import run_cluster
from cactus.stages.common import DataRef
from cactus.stages.embed import run_embed
from cactus.stages.evaluate import run_evaluate
from cactus.stages.meta import run_meta
from cactus.stages.tasks import run_tasks


def test_protonets_start_from_the_encoder_and_round_trip_through_the_artifact(tmp_path):
    """Also: a learner whose stored encoder config was tampered with is refused in one line."""
    ref = DataRef("digits")
    run_embed(tmp_path / "e.h5", ref, "contrastive", {"epochs": 1, "dim": 16, "width": 16})
    run_cluster(tmp_path / "c.h5", tmp_path / "e.h5", clusters=20, partitions=2, min_cluster_size=6)
    run_tasks(tmp_path / "t.h5", tmp_path / "c.h5", ways=5, shots=1, queries=5, num_tasks=40)
    result = run_meta(tmp_path / "m.h5", tmp_path / "t.h5", "protonets", {"init_from": tmp_path / "e.h5"},
                      iterations=4, device="cpu", validation="none")
    learner = read_artifact(result.path, stage="meta")
    embedded = read_artifact(tmp_path / "e.h5", stage="embed")
    assert learner.config["learner"]["encoder"]["method"] == "contrastive"
    assert embedded.key in learner.inputs  # a retrained encoder changes the learner's key
    weights, start = learner.group("weights"), embedded.group("encoder")
    assert set(weights) == set(start)
    assert any(not np.array_equal(weights[k], start[k]) for k in weights if k.endswith("weight"))  # fine-tuned
    report = run_evaluate(result.path, ways=[5], shots=[1], num_tasks=40, device="cpu")
    assert report["learner"] == "protonets" and report["results"][0]["accuracy"] > 30

    import h5py

    from tests.conftest import run_cli

    with h5py.File(result.path, "r+") as handle:
        config = json.loads(handle.attrs["config"])
        config["learner"]["encoder"]["colour"] = "red"  # an argument no encoder takes
        handle.attrs["config"] = json.dumps(config, sort_keys=True)
    refused = run_cli("evaluate", str(result.path), "--num-tasks", "5", "--shots", "1", "--device", "cpu")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert lines[-1].startswith("cactus: error:") and "unknown option 'colour'" in lines[-1], refused.stderr
