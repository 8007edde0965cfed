"""The hostile-input table: every named bad input the tests try, and the one-line error each gets.

Runs the named cases of tests/test_hostile_inputs.py (damaged artifacts fed to every command that
reads them), tests/test_hostile_datasets.py (bad datasets given to ``cactus embed --data``) and
tests/test_trust.py (outputs that must not be overwritten, a full disk, devices and FIFOs, a header
declaring 745 GiB, ...), prints the table and writes it to bench/results/bad_inputs.md. The tests
assert each outcome; this script only records them (tests never write bench results).

    python bench/bad_inputs.py [--out bench/results/bad_inputs.md]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cases live in tests/


def _cell(text: str, folders: list[Path]) -> str:
    for folder in folders:
        text = text.replace(str(folder) + "/", "").replace(str(folder), ".")
    return text.replace("|", "\\|").replace("\n", " ")


def _last_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


def damaged_artifact_rows(clean: Path) -> list[str]:
    import pytest

    from tests.test_hostile_inputs import NAMED_CASES, build_pipeline, commands, outcome, run

    rows = ["| artifact | damage | command | outcome |", "|---|---|---|---|"]
    pipeline = build_pipeline(clean)
    for kind, description, mutate in NAMED_CASES:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            path = folder / pipeline[kind].name
            shutil.copy(pipeline[kind], path)
            mutate(path)
            for args in commands(kind, path, pipeline, folder):
                result = run(args)
                try:
                    message = outcome(result, path)
                except (AssertionError, pytest.fail.Exception):
                    if result.exception is not None and not isinstance(result.exception, SystemExit):
                        message = f"**GAP: uncaught {type(result.exception).__name__}: {result.exception}**"
                    else:
                        message = f"**GAP: not one line:** {' / '.join(result.stderr.strip().splitlines()[:2])}"
                rows.append(f"| {kind}.h5 | {description} | `cactus {args[0]}` | {_cell(message, [folder])} |")
    return rows


def dataset_rows() -> list[str]:
    from tests.test_hostile_datasets import DATASET_CASES, embed_outcome

    rows = ["| dataset | `cactus embed --data` gets |", "|---|---|"]
    for description, build, _ in DATASET_CASES:
        with tempfile.TemporaryDirectory() as name:
            _, stderr, _ = embed_outcome(Path(name), build)
            rows.append(f"| {description} | {_cell(_last_error(stderr), [Path(name)])} |")
    return rows


def trust_rows(clean: Path) -> list[str]:
    from tests.test_trust import TRUST_CASES, cactus, run_trust_case

    embed, cluster = clean / "trust_emb.h5", clean / "trust_parts.h5"
    assert cactus("embed", "--data", "digits", "--method", "pca", "--dim", "8", "-o", str(embed))[0] == 0
    assert cactus("cluster", str(embed), "-k", "10", "-p", "2", "-o", str(cluster))[0] == 0
    rows = ["| case | exit | outcome | left behind |", "|---|---|---|---|"]
    for description, build, _, in_subprocess in TRUST_CASES:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            run = {"embed": Path(shutil.copy(embed, folder / "emb.h5")),
                   "cluster": Path(shutil.copy(cluster, folder / "parts.h5"))}
            code, stderr, _ = run_trust_case(run, folder, build, in_subprocess)
            left = sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))
            rows.append(f"| {description} | {code} | {_cell(_last_error(stderr), [folder])} | "
                        f"{', '.join(left) or 'nothing'} |")
    return rows


def option_rows() -> list[str]:
    """Bad option values (tests/test_options.py's RANGE_CASES), run for real in an empty folder."""
    import os

    from click.testing import CliRunner

    from cli import main as cactus_main
    from tests.test_options import RANGE_CASES

    rows = ["| command | exit | outcome |", "|---|---|---|"]
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as name:
        os.chdir(name)
        try:
            for args, _ in RANGE_CASES:
                result = CliRunner().invoke(cactus_main, args, prog_name="cactus")
                rows.append(f"| `cactus {' '.join(args)}` | {result.exit_code} | "
                            f"{_cell(_last_error(result.stderr), [Path(name)])} |")
        finally:
            os.chdir(here)
    return rows


BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bad_inputs.md")
    target = parser.parse_args().out
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as name:
        clean = Path(name)
        sections = [("Damaged artifacts", damaged_artifact_rows(clean)), ("Bad datasets", dataset_rows()),
                    ("Outputs, full disks, devices, crafted headers (issue 18)", trust_rows(clean)),
                    ("Option values out of range (issue 18)", option_rows())]
    text = ("# Bad inputs tried and the error each gets\n\n"
            "Written by `python bench/bad_inputs.py` from the named cases of tests/test_hostile_inputs.py, "
            "tests/test_hostile_datasets.py and tests/test_trust.py (the tests assert them; the hypothesis "
            "tests try random damage on top).\n"
            + "".join(f"\n## {title}\n\n" + "\n".join(rows) + "\n" for title, rows in sections))
    print(text)
    from cactus.core.atomic import write_text

    write_text(target, text)
    # BENCHMARKS.md shows the issue-18 sections; the long table of damaged artifacts stays in the results file.
    benchmarks = REPO / "BENCHMARKS.md"
    page = benchmarks.read_text()
    if BEGIN in page and END in page:
        shown = "".join(f"\n### {title}\n\n" + "\n".join(rows) + "\n" for title, rows in sections[2:])
        head, rest = page.split(BEGIN, 1)
        write_text(benchmarks, head + BEGIN + "\n" + shown + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
