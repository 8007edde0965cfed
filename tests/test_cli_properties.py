"""Property test: any value for any option of any command ends cleanly.

For every command, hypothesis replaces one option of a valid, fast invocation on tiny digits
artifacts by a drawn value (integers with 0 and negatives, huge numbers, floats with nan / inf, odd
strings, every choice and a bogus one) and asserts: exit 0 with a readable artifact, or exit 1 / 2
with exactly one error line on stderr (the last); never a traceback, never a hang (each call has a time limit).
Runs in process (click's CliRunner), so a signal from the code under test fails the whole session.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECONDS_PER_CALL = 60
#: Options that name where to write, or that only select output format: not the subject of this test.
NOT_DRAWN = {"out", "help", "as_json", "version", "out_dir", "replay", "config_file", "resume", "write_report"}


def invoke(args: list[str]):
    from click.testing import CliRunner

    from cli import main

    def too_slow(_signum, _frame):
        raise TimeoutError(f"cactus {' '.join(args)} ran past {SECONDS_PER_CALL} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(SECONDS_PER_CALL)
    try:
        return CliRunner().invoke(main, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A tiny digits pipeline made through the CLI: embeddings, partitions, tasks, learner."""
    folder = tmp_path_factory.mktemp("pipeline")
    paths = {name: folder / f"{name}.h5" for name in ("embeddings", "partitions", "tasks", "learner")}
    steps = [
        ["embed", "--data", "digits", "--method", "pca", "--dim", "8", "-o", str(paths["embeddings"])],
        ["cluster", str(paths["embeddings"]), "-o", str(paths["partitions"]), "--clusters", "20", "--partitions", "2"],
        ["tasks", str(paths["partitions"]), "-o", str(paths["tasks"]), "--num-tasks", "40"],
        ["meta", str(paths["tasks"]), "-o", str(paths["learner"]), "--iterations", "2", "--filters", "8",
         "--validation", "none", "--threads", "1", "--device", "cpu"],
    ]
    for step in steps:
        result = invoke(step)
        assert result.exit_code == 0, (step, result.output, result.exception)
    return paths


def base_invocations(paths: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """A valid, fast call of each command (a few seconds at most)."""
    return {
        "embed": ["embed", "--data", "digits", "--method", "pca", "--dim", "8", "-o", str(out / "e.h5")],
        "cluster": ["cluster", str(paths["embeddings"]), "-o", str(out / "p.h5"), "--clusters", "20",
                    "--partitions", "2"],
        "tasks": ["tasks", str(paths["partitions"]), "-o", str(out / "t.h5"), "--num-tasks", "30"],
        "meta": ["meta", str(paths["tasks"]), "-o", str(out / "l.h5"), "--iterations", "2", "--filters", "8",
                 "--validation", "none", "--threads", "1", "--device", "cpu"],
        "evaluate": ["evaluate", str(paths["learner"]), "--num-tasks", "5", "--shots", "1", "--device", "cpu"],
        "info": ["info", str(paths["learner"])],
        "run": ["run", "--data", "digits", "--out-dir", str(out / "run"), "--partitions", "2", "--iterations", "2",
                "--eval-tasks", "5", "--eval-shots", "1", "--threads", "1", "--device", "cpu"],
    }


def command_of(name: str) -> click.Command:
    from cli import main

    return main.commands[name]


def drawn_options(name: str) -> list[click.Option]:
    return [p for p in command_of(name).params
            if isinstance(p, click.Option) and p.name not in NOT_DRAWN and not p.is_flag]


ODD_STRINGS = ["", "abc", "-1", "0", "1e9", "nan", "inf", "../nowhere.h5", "/dev/zero", "5,,", "1,-2", " 3 ", "x" * 300]


#: Options that say how much work to do: a huge value is a legitimately long run, not bad input, so only
#: small, zero, negative and malformed values are drawn for them.
WORK_AMOUNTS = {"iterations", "kmeans_iterations", "epochs", "steps", "partitions", "num_tasks", "eval_tasks"}


def values_for(option: click.Option) -> st.SearchStrategy[str]:
    huge = [-(10**9)] if option.name in WORK_AMOUNTS else [10**9, -(10**9), 2**63]
    numbers = st.one_of(st.integers(-3, 3), st.sampled_from(huge))
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e30]))
    kind = option.type
    if isinstance(kind, click.Choice):
        return st.sampled_from([*map(str, kind.choices), "bogus"])
    if isinstance(kind, (click.types.IntParamType, click.IntRange)):
        return st.one_of(numbers.map(str), st.sampled_from(ODD_STRINGS))
    if isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        return st.one_of(floats.map(lambda x: "nan" if math.isnan(x) else repr(x)), st.sampled_from(ODD_STRINGS))
    return st.one_of(numbers.map(str), st.sampled_from(ODD_STRINGS))


def with_option(args: list[str], option: click.Option, value: str) -> list[str]:
    """``args`` with ``option`` set to ``value`` (replacing it where the base call sets it)."""
    flag = max(option.opts, key=len)
    names = set(option.opts)
    out, skip = [], False
    for word in args:
        if skip:
            skip = False
            continue
        if word in names:
            skip = True
            continue
        out.append(word)
    return [*out, flag, value]


def check_outcome(result, args: list[str]) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"cactus {' '.join(args)}: uncaught {type(result.exception).__name__}\n{trace}")
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert "Traceback" not in result.stderr
    if result.exit_code != 0:  # progress lines may come first; the error is one line, the last one
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("cactus: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], (args, result.stderr)


@pytest.mark.parametrize("name", ["embed", "cluster", "tasks", "meta", "evaluate", "info",
                                  pytest.param("run", marks=pytest.mark.slow)])
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_option_value_ends_cleanly(name, data, artifacts, tmp_path):
    options = drawn_options(name)
    if not options:
        pytest.skip(f"{name} has no value options")
    base = base_invocations(artifacts, tmp_path)[name]
    option = data.draw(st.sampled_from(options), label="option")
    value = data.draw(values_for(option), label="value")
    args = with_option(base, option, value)
    result = invoke(args)
    check_outcome(result, args)
    if result.exit_code == 0 and name not in ("info", "evaluate", "run"):
        from cactus.core.store import read_artifact

        written = Path(args[args.index("-o") + 1])
        assert read_artifact(written).stage == {"embed": "embed", "cluster": "cluster", "tasks": "tasks",
                                                 "meta": "meta"}[name]
