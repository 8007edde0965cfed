"""Config files, their precedence, replaying an artifact's config, and the CLI's comforts."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import click
import numpy as np
import pytest

from tests.conftest import REPO, run_cli


def show(*args: str, env: dict | None = None) -> dict:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_precedence_default_file_environment_command_line(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[cluster]\npartitions = 3\nclusters = 7\nmin-cluster-size = 4\n[run]\neval-shots = [1, 5, 10]\n')
    base = ("--config", str(config), "config", "show", "cluster", "E.h5", "--json")
    env = {"CACTUS_CLUSTER_PARTITIONS": "11", "CACTUS_CLUSTER_CLUSTERS": "13"}
    shown = show(*base, "--clusters", "17", env=env)["cluster"]
    assert shown["engine"] == {"value": "relaxed", "source": "default"}
    assert shown["min-cluster-size"] == {"value": 4, "source": f"file {config}"}
    assert shown["partitions"] == {"value": 11, "source": "environment CACTUS_CLUSTER_PARTITIONS"}  # env > file
    assert shown["clusters"] == {"value": 17, "source": "command line"}  # command line > env > file
    assert show("--config", str(config), "config", "show", "run", "--json")["run"]["eval-shots"]["value"] == [1, 5, 10]
    # CACTUS_CONFIG names the file too
    assert show("config", "show", "cluster", "--json", env={"CACTUS_CONFIG": str(config)})["cluster"]["clusters"][
        "value"] == 7


def test_config_show_prints_a_config_file_that_reads_back(tmp_path):
    result = run_cli("config", "show", "run", "--partitions", "7", "--eval-shots", "1")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^partitions += 7  # command line$", result.stdout, re.M)
    config = tmp_path / "shown.toml"
    config.write_text(result.stdout)
    again = show("--config", str(config), "config", "show", "run", "--json")["run"]
    assert again["partitions"] == {"value": 7, "source": f"file {config}"}
    assert again["eval-shots"]["value"] == [1] and again["dim"]["value"] is None


def test_the_file_really_sets_the_options_and_the_environment_beats_it(tmp_path):
    embedded = tmp_path / "e.h5"
    assert run_cli("embed", "--data", "digits", "--dim", "8", "-o", str(embedded)).returncode == 0
    config = tmp_path / "c.toml"
    config.write_text("[cluster]\nclusters = 6\npartitions = 2\n")
    from_file = run_cli("--config", str(config), "cluster", str(embedded), "-o", str(tmp_path / "p.h5"), "--json")
    assert json.loads(from_file.stdout)["partitions"] == 2 and json.loads(from_file.stdout)["clusters"] == 6
    from_env = run_cli("--config", str(config), "cluster", str(embedded), "-o", str(tmp_path / "q.h5"), "--json",
                       env={"CACTUS_CLUSTER_PARTITIONS": "3"})
    assert json.loads(from_env.stdout)["partitions"] == 3 and json.loads(from_env.stdout)["clusters"] == 6


@pytest.mark.parametrize("text, fragment", [
    ("[cluster]\nbogus = 1\n", "'bogus' is not an option of cluster"),
    ("[clusterz]\npartitions = 1\n", "[clusterz] is not a cactus command"),
    ("[cluster\n", "not valid TOML"),
])
def test_a_bad_config_file_is_one_clear_line(tmp_path, text, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("--config", str(config), "config", "show", "cluster")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cactus: error: --config {config}: ") and fragment in lines[0]


def test_run_takes_a_toml_config_of_its_own(tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text("[run]\npartitions = 4\niterations = 9\n")
    shown = show("config", "show", "run", "--config", str(config), "--json")["run"]
    assert shown["partitions"]["value"] == 4 and shown["iterations"]["source"] == f"file {config}"


@pytest.fixture(scope="module")
def digits_chain(tmp_path_factory):
    """A small pipeline made by the stage commands, with non-default options: (folder, keys)."""
    out = tmp_path_factory.mktemp("chain")
    steps = [("embed", "--data", "digits", "--dim", "12", "--seed", "3", "-o", str(out / "emb.h5")),
             ("cluster", str(out / "emb.h5"), "-k", "15", "-p", "3", "--seed", "2", "-o", str(out / "parts.h5")),
             ("tasks", str(out / "parts.h5"), "--ways", "4", "--shots", "2", "--queries", "3", "--num-tasks", "200",
              "-o", str(out / "tasks.h5")),
             ("meta", str(out / "tasks.h5"), "--iterations", "30", "--validate-every", "10", "--threads", "1",
              "-o", str(out / "learner.h5"))]
    keys = {}
    for step in steps:
        result = run_cli(*step, "--json")
        assert result.returncode == 0, result.stderr
        keys[step[0]] = json.loads(result.stdout)["key"]
    return out, keys


def test_replayed_config_reproduces_every_key_and_array(digits_chain, tmp_path):
    from cactus.core.store import read_artifact

    original, keys = digits_chain
    result = run_cli("run", "--config", str(original / "learner.h5"), "--out-dir", str(tmp_path), "--eval-tasks",
                     "50", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["same_key"] and [s["stage"] for s in summary["stages"]] == ["embed", "cluster", "tasks", "meta"]
    assert {s["stage"]: s["key"] for s in summary["stages"]} == keys
    assert not any(s["skipped"] for s in summary["stages"])  # recomputed in the new folder, not copied
    for name in ("emb.h5", "parts.h5", "tasks.h5", "learner.h5"):
        before, after = read_artifact(original / name), read_artifact(tmp_path / name)
        assert before.key == after.key and before.config == after.config
        for array in ("embeddings", "labels", "support", "query"):
            if array in before.arrays:
                np.testing.assert_array_equal(before.arrays[array], after.arrays[array])
    assert summary["evaluation"][0]["results"][0]["ways"] == 5  # evaluated like cactus run


def test_replaying_a_stage_artifact_runs_only_what_made_it(digits_chain, tmp_path):
    original, keys = digits_chain
    result = run_cli("run", "--config", str(original / "parts.h5"), "--out-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(s["stage"], s["key"]) for s in summary["stages"]] == [("embed", keys["embed"]),
                                                                   ("cluster", keys["cluster"])]
    assert summary["evaluation"] == [] and not (tmp_path / "tasks.h5").exists()
    # in the artifact's own folder everything is already there: replay reuses it
    again = json.loads(run_cli("run", "--config", str(original / "parts.h5"), "--json").stdout)
    assert all(s["skipped"] for s in again["stages"])


def test_replay_without_the_inputs_beside_it_is_one_clear_line(digits_chain, tmp_path):
    original, _ = digits_chain
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "tasks.h5").write_bytes((original / "tasks.h5").read_bytes())
    result = run_cli("run", "--config", str(alone / "tasks.h5"), "--out-dir", str(tmp_path / "x"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cluster input" in result.stderr


def crafted_copy(original, folder, name: str, edit) -> None:
    """The chain's artifacts copied into ``folder``, with ``edit(config)`` applied to ``name``'s stored config."""
    import shutil

    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for path in original.glob("*.h5"):
        shutil.copy(path, folder / path.name)
    with h5py.File(folder / name, "r+") as handle:
        config = json.loads(handle.attrs["config"])
        edit(config)
        handle.attrs["config"] = json.dumps(config, sort_keys=True)


def _set(path: tuple[str, ...], value):
    def edit(config):
        for key in path[:-1]:
            config = config[key]
        config[path[-1]] = value
    return edit


def _drop(path: tuple[str, ...]):
    def edit(config):
        for key in path[:-1]:
            config = config[key]
        del config[path[-1]]
    return edit


@pytest.mark.parametrize("name, edit, fragment", [
    ("parts.h5", _set(("bogus",), 1), "has bogus, not an option"),
    ("parts.h5", _drop(("partitions",)), "lacks 'partitions'"),
    ("parts.h5", _set(("partitions",), "abc"), "--partitions 'abc'"),
    ("tasks.h5", _set(("num_tasks",), 1e9), "--num-tasks 1000000000: must be at most"),
    ("tasks.h5", _set(("ways",), 1), "--ways 1: must be at least 2"),
    ("learner.h5", _drop(("learner",)), "no learner"),
    ("learner.h5", _set(("learner", "filters"), "abc"), "--filters 'abc'"),
    ("learner.h5", _set(("learner", "downsample"), "sideways"), "--downsample 'sideways'"),
    ("learner.h5", _set(("learner", "bogus"), 1), "has bogus"),
    ("emb.h5", _drop(("encoder", "method")), "no encoder method"),
])
def test_a_crafted_stored_config_is_one_line_saying_recompute(digits_chain, tmp_path, name, edit, fragment):
    original, _ = digits_chain
    crafted_copy(original, tmp_path / "in", name, edit)
    result = run_cli("run", "--config", str(tmp_path / "in" / "learner.h5"), "--out-dir", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("cactus: error: ") and fragment in lines[-1], lines[-1]
    assert "recompute" in lines[-1] or name == "emb.h5"
    if name != "emb.h5":  # every stored config is checked before any stage runs
        assert not (tmp_path / "out").exists()


def test_a_cluster_artifact_from_before_the_relaxed_engine_replays_with_faiss(digits_chain, tmp_path):
    from cactus.core.store import read_artifact
    from cactus.stages.replay import stored_settings

    original, _ = digits_chain
    crafted_copy(original, tmp_path, "parts.h5", _drop(("engine",)))
    settings = stored_settings(read_artifact(tmp_path / "parts.h5", arrays=False), "auto", 1)
    assert settings.engine == "faiss" and settings.clusters == 15 and settings.threads == 1


# -- CLI comfort ------------------------------------------------------------------------------


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_command_takes_json():
    import cli

    missing = [" ".join(path) for path, command in leaf_commands(cli.main)
               if not any("--json" in param.opts for param in command.params)]
    assert not missing


def test_version_quiet_and_completion(digits_chain, tmp_path):
    from cactus import __version__

    assert run_cli("--version").stdout.strip().endswith(__version__)
    original, _ = digits_chain
    loud = run_cli("cluster", str(original / "emb.h5"), "-k", "15", "-p", "3", "--seed", "2", "-o",
                   str(original / "parts.h5"))
    assert "up to date" in loud.stderr
    quiet = run_cli("-q", "cluster", str(original / "emb.h5"), "-k", "15", "-p", "3", "--seed", "2", "-o",
                    str(original / "parts.h5"))
    assert quiet.returncode == 0 and quiet.stderr == ""
    completion = subprocess.run([sys.executable, "-c", "from cli import main; main(prog_name='cactus')"], cwd=REPO,
                                env={"_CACTUS_COMPLETE": "bash_source", "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True)
    assert "_CACTUS_COMPLETE=bash_complete" in completion.stdout and "complete " in completion.stdout


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(monkeypatch, capsys):
    import io

    from cactus.core import log
    from cactus.core.progress import Progress

    log.set_verbosity(1)
    plain = list(Progress(range(3), 3, "step", every_s=0.0))
    assert plain == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "cactus: step: 3/3" and not any("\r" in line for line in lines)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(Progress(range(3), 3, "step", every_s=0.0)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "cactus: step" not in terminal.getvalue()  # a redrawn tqdm bar


def test_an_artifact_given_as_the_config_file_is_one_clear_line(tmp_path):
    artifact = tmp_path / "learner.h5"
    artifact.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    result = run_cli("--config", str(artifact), "run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert "not a TOML file" in lines[0] and "cactus run --config FILE.h5" in lines[0]


def test_a_dataset_path_is_one_key_however_it_is_spelt(tmp_path, monkeypatch):
    """~/d, ./d and the absolute path record the same reference, so a stage's cache is reused across spellings."""
    from cactus.stages.common import DataRef

    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    spellings = ["folder:~/data", "folder:./data", "folder:data", f"folder:{home}/data", "folder:~/x/../data"]
    recorded = {DataRef(spec=spec).as_dict()["spec"] for spec in spellings}
    assert recorded == {f"folder:{home}/data"}
    assert DataRef(spec="digits").as_dict()["spec"] == "digits"
