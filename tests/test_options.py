"""One declaration per stage option: every option reaches its command, `cactus run` and a TOML file.

The tests walk the declarations (:data:`cactus.stages.configs.STAGE_CONFIGS`) rather than a hand
list: for every declared field, its stage command and `cactus run` have the option, a TOML key
for it (in the stage's own table, and in [run]) reaches the stage function, `--help` lists
every choice, and an out-of-range value is a click usage error naming the option.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cactus.stages.configs import META_BATCH_DEFAULT, STAGE_CONFIGS, MetaConfig
from cactus.stages.options import Declared, declared, value_at

REPO = Path(__file__).resolve().parents[1]
ENTRIES = [(stage, entry) for stage, cls in STAGE_CONFIGS.items() for entry in declared(cls)]
IDS = [f"{stage}-{'.'.join(entry.path)}" for stage, entry in ENTRIES]


def invoke(args: list[str], **kwargs):
    from cli import main

    return CliRunner().invoke(main, args, **kwargs)


def command(name: str):
    from cli import main

    return main.commands[name]


def option_names(cmd) -> set[str]:
    return {opt for param in cmd.params for opt in param.opts}


def other_value(entry: Declared) -> Any:
    """A valid value for the option that is not its default (as a TOML file would give it)."""
    opt, default = entry.opt, entry.default
    choices = opt.allowed()
    if choices is not None:
        return next(c for c in choices if c != default)
    if opt.kind is bool:
        return True
    if opt.kind == "ints":
        return [3, 4]
    if opt.kind is int:
        return max(int(opt.low or 0), int(default or 0)) + 3
    if opt.kind is float:
        return (default or 1.0) * 2.5
    return {"data": "npz:/nowhere/x.npz", "device": "cpu"}.get(entry.name, f"some-{entry.name}")


def as_received(entry: Declared, value: Any) -> Any:
    return tuple(value) if entry.opt.kind == "ints" else value


# -- every option is on its command and on `cactus run` -----------------------------------------------


@pytest.mark.parametrize("stage, entry", ENTRIES, ids=IDS)
def test_every_declared_option_is_on_its_command_and_on_run(stage, entry):
    assert entry.flag() in option_names(command(stage))
    assert entry.flag(run=True) in option_names(command("run"))


def test_run_has_nothing_undeclared_but_its_own_options():
    declared_names = {entry.flag(run=True) for _, entry in ENTRIES}
    own = {"--preset", "--budget", "--dry-run", "--out-dir", "--init-from-encoder", "--force", "--json", "--report",
           "--config"}
    assert option_names(command("run")) - declared_names == own


# -- a TOML key reaches the stage -----------------------------------------------------------------------


class Captured(dict):
    """The settings each (faked) stage function received."""


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """Stage functions replaced by recorders; the dataset by a stub of 8x8 images."""
    from cactus.stages import cluster, common, embed, evaluate, meta, tasks
    from cactus.stages.common import StageResult

    got = Captured()

    def result(stage, out):
        return StageResult(stage, Path(out), "0" * 64, False)

    def fake_embed(out, settings, encoder_file=None, force=False):
        got["embed"] = settings
        return result("embed", out)

    def fake_cluster(out, embed_file, settings=None, *, force=False, shard=None, **fields):
        got["cluster"] = settings
        return result("cluster", out)

    def fake_tasks(out, cluster_file, settings=None, *, force=False, **fields):
        got["tasks"] = settings
        return result("tasks", out)

    def fake_meta(out, tasks_file, settings, init_from=None, force=False):
        got["meta"] = settings
        got["init_from"] = init_from
        return result("meta", out)

    def fake_evaluate(artifact, settings, embeddings_path=None, runs_path=None):
        got["evaluate"] = settings  # cactus run: the embedding evaluation (last) carries --eval-learner
        return {"artifact": str(artifact), "learner": settings.learner or "knn", "supervised": False,
                "data": "digits", "results": []}

    monkeypatch.setattr(embed, "embed_stage", fake_embed)
    monkeypatch.setattr(cluster, "run_cluster", fake_cluster)
    monkeypatch.setattr(tasks, "run_tasks", fake_tasks)
    monkeypatch.setattr(meta, "meta_stage", fake_meta)
    monkeypatch.setattr(evaluate, "evaluate_stage", fake_evaluate)
    monkeypatch.setattr(common.DataRef, "load", lambda self: SimpleNamespace(images=np.zeros((4, 8, 8, 1))))
    # the real embed stage's check of its encoder's options (run --dry-run builds the encoder) goes with it
    monkeypatch.setattr("cactus.cli.run.check_encoder", lambda embed: None)
    return got


STAGE_ARGS = {"embed": ["-o", "e.h5"], "cluster": ["e.h5", "-o", "p.h5"], "tasks": ["p.h5", "-o", "t.h5"],
              "meta": ["-o", "m.h5"], "evaluate": ["m.h5"]}


def toml_line(key: str, value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({key: value})


@pytest.mark.parametrize("stage, entry", ENTRIES, ids=IDS)
def test_a_toml_key_in_the_stage_table_reaches_the_stage(stage, entry, fake_stages, tmp_path):
    value = other_value(entry)
    config = tmp_path / "c.toml"
    config.write_text(f"[{stage}]\n" + toml_line(entry.name.replace("_", "-"), value))
    result = invoke(["--config", str(config), stage, *STAGE_ARGS[stage]])
    assert result.exit_code == 0, result.output
    assert value_at(fake_stages[stage], entry.path) == as_received(entry, value)


@pytest.mark.parametrize("stage, entry", ENTRIES, ids=IDS)
def test_a_toml_key_in_the_run_table_reaches_the_stage(stage, entry, fake_stages, tmp_path):
    value = other_value(entry)
    config = tmp_path / "c.toml"
    config.write_text("[run]\n" + toml_line(entry.run_name.replace("_", "-"), value))
    result = invoke(["--config", str(config), "run", "--out-dir", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    if stage in ("cluster", "tasks") and fake_stages["meta"].tasks_from == "labels":
        pytest.fail("a run option switched the pipeline to the oracle")
    assert value_at(fake_stages[stage], entry.path) == as_received(entry, value)
    # `cactus config show run` reports it as coming from the file
    shown = json.loads(invoke(["--config", str(config), "config", "show", "run", "--json"]).output)["run"]
    assert shown[entry.run_name.replace("_", "-")] == {"value": value, "source": f"file {config}"}


def test_run_derives_what_it_is_not_given(fake_stages, tmp_path):
    assert invoke(["run", "--out-dir", str(tmp_path), "--algo", "maml", "--iterations", "50"]).exit_code == 0
    meta, cluster, tasks = fake_stages["meta"], fake_stages["cluster"], fake_stages["tasks"]
    assert meta.meta_batch is None and meta.batch == META_BATCH_DEFAULT["maml"] == 8
    assert tasks.shape.num_tasks == 1000 and fake_stages["embed"].dim == 32  # half of the 64 pixels
    assert cluster.min_cluster_size == 6 and cluster.min_clusters == 5  # shots + queries, ways
    assert invoke(["run", "--out-dir", str(tmp_path), "--algo", "maml", "--iterations", "500"]).exit_code == 0
    assert fake_stages["tasks"].shape.num_tasks == 500 * 8 + 100


def test_meta_batch_default_is_declared_once():
    assert MetaConfig(algo="protonets").batch == 1 and MetaConfig(algo="maml").batch == 8
    assert MetaConfig(algo="maml", meta_batch=3).batch == 3
    help_text = re.sub(r"\s+", " ", invoke(["meta", "--help"]).output)
    assert "protonets 1, maml 8" in help_text


def test_the_split_choices_and_the_meta_batch_default_are_written_once_in_the_code():
    sources = "\n".join(p.read_text() for p in (REPO / "cactus").rglob("*.py"))
    assert len(re.findall(r'"classes",\s*"lake"', sources)) == 1  # cactus.datasets.dataset.SPLIT_RULES
    assert len(re.findall(r'"maml":\s*8', sources)) == 1 and len(re.findall(r"8 if", sources)) == 0


def test_checkpoint_every_means_seconds_in_embed_and_meta():
    for name in ("embed", "meta"):
        param = next(p for p in command(name).params if p.name == "checkpoint_every")
        assert "Seconds" in param.help and param.default == 300.0


# -- --help lists every choice --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*STAGE_CONFIGS, "run"])
def test_help_lists_every_choice(name):
    help_text = re.sub(r"\s+", "", invoke([name, "--help"], terminal_width=200).output)
    stages = STAGE_CONFIGS if name == "run" else {name: STAGE_CONFIGS[name]}
    for cls in stages.values():
        for entry in declared(cls):
            for choice in entry.opt.allowed() or ():
                assert choice in help_text, (name, entry.name, choice)
    if name == "run":
        from cactus.stages.presets import PRESETS

        assert all(preset in help_text for preset in PRESETS)


def test_embed_help_lists_every_encoder_and_split():
    from cactus.datasets.dataset import SPLIT_RULES
    from embeddings import REGISTRY

    help_text = invoke(["embed", "--help"]).output
    listed = re.search(r"--method \[([^\]]+)\]", help_text).group(1)
    assert sorted(listed.replace("\n", "").replace(" ", "").split("|")) == sorted(REGISTRY)
    listed = re.search(r"--split \[([^\]]+)\]", help_text).group(1)
    assert listed.split("|") == list(SPLIT_RULES)


# -- presets --------------------------------------------------------------------------------------------


def test_a_preset_fills_what_is_not_given(fake_stages, tmp_path):
    from cactus.stages.presets import preset_values

    result = invoke(["run", "--preset", "cactus-omniglot", "--budget", "cpu", "--out-dir", str(tmp_path),
                     "--ways", "10"])
    assert result.exit_code == 0, result.output
    by_run_name = {}
    for stage, cls in STAGE_CONFIGS.items():
        for entry in declared(cls):
            if stage in fake_stages:
                by_run_name.setdefault(entry.run_name, value_at(fake_stages[stage], entry.path))
    for name, value in preset_values("cactus-omniglot", "cpu").items():
        if name == "ways":
            assert by_run_name[name] == 10  # the command line beats the preset
        elif name in ("eval_ways", "eval_shots"):
            assert by_run_name[name] == tuple(int(v) for v in value.split(","))
        else:
            assert by_run_name[name] == value, name
    assert fake_stages["meta"].batch == 8 and fake_stages["meta"].iterations == 600


def test_config_show_marks_preset_values_and_reads_back(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    result = invoke(["config", "show", "run", "--preset", "cactus-omniglot", "--budget", "paper"])
    assert result.exit_code == 0, result.output
    assert re.search(r'^method = "acai"  # preset cactus-omniglot \(paper\)$', result.output, re.M)
    assert re.search(r"^iterations = 30000  # preset cactus-omniglot \(paper\)$", result.output, re.M)
    parsed = tomllib.loads(result.output)["run"]
    assert parsed["eval-ways"] == [5, 20] and parsed["quick"] is False and "dim" in parsed


def test_every_preset_sets_only_run_options():
    from cactus.stages.presets import BUDGETS, PRESETS, preset_values

    names = {param.name for param in command("run").params}
    for preset in PRESETS:
        for budget in BUDGETS:
            assert set(preset_values(preset, budget)) <= names, preset


# -- bad values: one line naming the option (exit 1 out of range, 2 unparsed), never a traceback ------------

RANGE_CASES = [
    (["tasks", "p.h5", "-o", "t.h5", "--queries", "0"], "--queries"),
    (["evaluate", "m.h5", "--queries", "0"], "--queries"),
    (["run", "--eval-queries", "0"], "--eval-queries"),
    (["meta", "t.h5", "-o", "m.h5", "--validate-every", "0"], "--validate-every"),
    (["meta", "t.h5", "-o", "m.h5", "--meta-lr", "-1"], "--meta-lr"),
    (["meta", "t.h5", "-o", "m.h5", "--meta-lr", "nan"], "--meta-lr"),
    (["meta", "t.h5", "-o", "m.h5", "--meta-lr", "inf"], "--meta-lr"),
    (["cluster", "e.h5", "-o", "p.h5", "--seed", "-1"], "--seed"),
    (["embed", "-o", "e.h5", "--dim", "-1"], "--dim"),
    (["embed", "-o", "e.h5", "--dim", "0"], "--dim"),
    (["tasks", "p.h5", "-o", "t.h5", "--ways", "1"], "--ways"),
    (["run", "--ways", "1"], "--ways"),
    (["evaluate", "m.h5", "--ways", "5,1"], "--ways"),
    (["cluster", "e.h5", "-o", "p.h5", "--clusters", "0"], "--clusters"),
    (["meta", "t.h5", "-o", "m.h5", "--meta-batch", "0"], "--meta-batch"),
    (["cluster", "e.h5", "-o", "p.h5", "--min-cluster-size", "-2"], "--min-cluster-size"),
    (["run", "--eval-tasks", "0"], "--eval-tasks"),
    (["run", "--partitions", "2.5"], "--partitions"),  # does not parse as an integer: exit 2
    (["run", "--partitions", "many"], "--partitions"),
    (["meta", "t.h5", "-o", "m.h5", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["embed", "-o", "e.h5", "--method", "nope"], "--method"),  # not a choice: exit 2
]


NOT_PARSED = ("2.5", "many", "nope")


@pytest.mark.parametrize("args, option", RANGE_CASES, ids=[" ".join(a) for a, _ in RANGE_CASES])
def test_an_out_of_range_option_is_one_line_naming_it(args, option, fake_stages):
    """Out of its declared range: exit 1 (bad input, like any CactusError); not parsed at all: exit 2."""
    result = invoke(args)
    assert isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == (2 if args[-1] in NOT_PARSED else 1), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cactus: error: ") and f"'{option}'" in lines[0], result.stderr


@pytest.mark.parametrize("table, option, code", [("[cluster]\npartitions = inf\n", "--partitions", 2),
                                                 ("[run]\npartitions = inf\n", "--partitions", 2),
                                                 ("[run]\nmeta-lr = nan\n", "--meta-lr", 1),
                                                 ("[run]\neval-shots = [1, 0]\n", "--eval-shots", 1),
                                                 ("[tasks]\nways = 1\n", "--ways", 1)])
def test_a_bad_toml_value_is_one_line_naming_the_option(table, option, code, tmp_path, fake_stages):
    config = tmp_path / "c.toml"
    config.write_text(table)
    stage = table[1:table.index("]")]
    result = invoke(["--config", str(config), stage, *STAGE_ARGS.get(stage, ["--out-dir", str(tmp_path)])])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and f"'{option}'" in lines[0], result.stderr


def test_python_callers_get_the_same_checks():
    from cactus.core.errors import CactusError
    from cactus.stages.configs import ClusterConfig, TasksConfig
    from cactus.stages.tasks import run_tasks

    with pytest.raises(CactusError, match=r"^--clusters 0: must be at least 2$"):
        ClusterConfig(clusters=0)
    with pytest.raises(CactusError, match=r"--meta-lr nan: must be a finite number"):
        MetaConfig(meta_lr=float("nan"))
    with pytest.raises(CactusError, match=r"--queries 0"):
        run_tasks(Path("unused.h5"), Path("unused.h5"), queries=0)
    with pytest.raises(TypeError, match="no option"):
        run_tasks(Path("unused.h5"), Path("unused.h5"), bogus=1)
    assert dataclasses.replace(TasksConfig(), seed=4).seed == 4


def test_too_many_ways_for_the_partitions_says_fewer_ways_or_more_clusters(tmp_path):
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed

    run_embed(tmp_path / "e.h5", DataRef("digits"), "pca", {"dim": 8})
    run_cluster(tmp_path / "p.h5", tmp_path / "e.h5", clusters=20, partitions=2)
    result = invoke(["tasks", str(tmp_path / "p.h5"), "-o", str(tmp_path / "t.h5"), "--ways", "50"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ways 50" in lines[0] and "fewer ways or more clusters" in lines[0], lines
    assert not (tmp_path / "t.h5").exists()
    # cactus run asks each partition to keep --ways clusters: the cluster stage says so before clustering
    result = invoke(["run", "--ways", "50", "--out-dir", str(tmp_path / "run"), "--partitions", "2"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert "fewer ways or more clusters" in lines[-1] and "--ways" in lines[-1], lines



def test_a_preset_that_fine_tunes_the_encoder_passes_it_to_the_meta_stage(fake_stages, tmp_path):
    """`init-from-encoder` set by a preset reaches the meta stage (it was once dropped: ProtoNets from scratch)."""
    result = invoke(["run", "--preset", "contrastive-protonets", "--data", "digits", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert fake_stages["init_from"] == tmp_path / "embeddings.h5"
    assert fake_stages["meta"].meta_lr == 1e-4
