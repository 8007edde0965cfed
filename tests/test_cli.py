"""The command line as a user meets it: a full run, inspection, and clean one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def assert_clean_error(result, *fragments: str) -> None:
    """One line on stderr naming the problem, a non-zero exit code, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_cli("run", "--out-dir", str(out), "--partitions", "5", "--iterations", "60", "--eval-tasks", "200",
                     "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result


def test_run_on_digits_writes_every_artifact_and_prints_the_evaluation(digits_run):
    out, summary, _ = digits_run
    assert [s["stage"] for s in summary["stages"]] == ["embed", "cluster", "tasks", "meta"]
    for name in ("embeddings.h5", "partitions.h5", "tasks.h5", "learner.h5"):
        assert (out / name).is_file()
    learners = {report["learner"]: report for report in summary["evaluation"]}
    assert set(learners) == {"protonets", "knn"}
    for report in learners.values():
        assert [(r["ways"], r["shots"]) for r in report["results"]] == [(5, 1), (5, 5), (10, 1), (10, 5)]  # widest: 10
        for r in report["results"]:
            assert 20 < r["accuracy"] <= 100 and 0 < r["ci95"] < 10  # far above 5-way chance
            assert r["tasks"] == 200


def test_rerun_reuses_every_stage_and_says_so(digits_run):
    out, first, _ = digits_run
    again = run_cli("run", "--out-dir", str(out), "--partitions", "5", "--iterations", "60", "--eval-tasks", "200",
                    "--threads", "1", "--json")
    summary = json.loads(again.stdout)
    assert all(s["skipped"] for s in summary["stages"])
    assert again.stderr.count("is up to date") == 5  # and the raw-pixel floor's embedding
    assert summary["evaluation"] == [{**r, "seconds": r2["seconds"]} for r, r2 in
                                     zip(first["evaluation"], summary["evaluation"], strict=False)]


def test_info_shows_stage_config_key_and_shapes(digits_run):
    out, summary, _ = digits_run
    result = run_cli("info", str(out / "tasks.h5"), "--json")
    info = json.loads(result.stdout)
    assert info["stage"] == "tasks" and info["config"]["ways"] == 5
    assert info["key"] == summary["stages"][2]["key"]
    assert info["inputs"] == [summary["stages"][1]["key"]]
    assert info["arrays"]["support"]["shape"][1] == 5 and info["arrays"]["query"]["shape"][1] == 75  # 15 queries
    human = run_cli("info", str(out / "learner.h5")).stdout
    assert "meta artifact" in human and "/weights/" in human
    assert f"inputs  {info['key']}" in human  # the learner was made from these tasks


def test_stage_commands_chain_and_force_recomputes(digits_run, tmp_path):
    out, _, _ = digits_run
    args = ("cluster", str(out / "embeddings.h5"), "-o", str(tmp_path / "p.h5"), "-k", "20", "-p", "2")
    first = run_cli(*args, "--json")
    assert first.returncode == 0 and not json.loads(first.stdout)["skipped"]
    cached = run_cli("cluster", str(out / "embeddings.h5"), "-o", str(tmp_path / "p.h5"), "-k", "20", "-p", "2")
    assert "up to date" in cached.stderr
    forced = run_cli("cluster", str(out / "embeddings.h5"), "-o", str(tmp_path / "p.h5"), "-k", "20", "-p", "2",
                     "--force", "--json")
    assert not json.loads(forced.stdout)["skipped"]
    evaluation = run_cli("evaluate", str(out / "embeddings.h5"), "--learner", "ridge", "--ways", "5,10", "--shots",
                         "1", "--num-tasks", "100", "--json")
    results = json.loads(evaluation.stdout)["results"]
    assert [(r["ways"], r["shots"]) for r in results] == [(5, 1), (10, 1)]


def test_bad_data_spec_is_one_clear_line(tmp_path):
    assert_clean_error(run_cli("embed", "--data", "mnist", "-o", str(tmp_path / "e.h5")), "--data", "mnist")
    assert not (tmp_path / "e.h5").exists()


def test_missing_file_is_one_clear_line(tmp_path):
    missing = tmp_path / "nope.h5"
    assert_clean_error(run_cli("cluster", str(missing), "-o", str(tmp_path / "p.h5")), str(missing))
    assert_clean_error(run_cli("embed", "--data", f"npz:{missing}", "-o", str(tmp_path / "e.h5")), str(missing))


def test_impossible_ways_is_one_clear_line_and_writes_nothing(digits_run, tmp_path):
    out, _, _ = digits_run
    result = run_cli("tasks", str(out / "partitions.h5"), "-o", str(tmp_path / "t.h5"), "--ways", "500")
    assert_clean_error(result, "--ways 500")
    assert not (tmp_path / "t.h5").exists()


def test_readout_option_scores_protonets_both_ways_and_refuses_other_learners(digits_run):
    out, _, _ = digits_run
    scores = {}
    for readout in ("prototype", "logistic", "auto"):
        result = run_cli("evaluate", str(out / "learner.h5"), "--shots", "1,5", "--num-tasks", "100",
                         "--readout", readout, "--json")
        assert result.returncode == 0, result.stderr
        scores[readout] = [r["accuracy"] for r in json.loads(result.stdout)["results"]]
    assert scores["prototype"][1] != scores["logistic"][1]  # the readouts do differ on the same 5-shot tasks
    assert scores["auto"] == [scores["prototype"][0], scores["logistic"][1]]  # prototypes at 1 shot, logistic at 5
    assert_clean_error(run_cli("evaluate", str(out / "embeddings.h5"), "--readout", "logistic"),
                       "--readout logistic", "only a ProtoNets learner")


def test_corrupt_artifact_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert_clean_error(run_cli("info", str(bad)), str(bad), "corrupt")


def test_help_does_not_import_heavy_modules():
    probe = ("import sys; from click.testing import CliRunner; import cli; "
             "r = CliRunner().invoke(cli.main, ['--help']); assert r.exit_code == 0; "
             "heavy = [m for m in ('torch', 'faiss', 'h5py', 'sklearn', 'scipy') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
