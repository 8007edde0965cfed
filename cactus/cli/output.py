"""What commands print and write: the --json summary, the evaluation report, JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import click


def emit(payload: dict, as_json: bool, human: str | None = None) -> None:
    """--json prints the machine-readable summary on stdout; otherwise a short human line."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    elif human is not None:
        click.echo(human)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    from cactus.core.atomic import write_text

    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", "JSON")


def finish_run(out_dir: Path, summary: dict, human: list[str], as_json: bool, write_report: bool,
               device: str, threads: int | None, evaluated: bool = True) -> None:
    """The end of ``cactus run`` (and of its replay): OUT_DIR/evaluation.json when something was evaluated,
    the HTML report when asked, then the --json summary or the human lines on stdout."""
    if evaluated:
        write_json(out_dir / "evaluation.json", summary)
    if write_report:
        from cactus.core import log
        from cactus.report.build import build_report

        log.info(f"report: wrote {build_report(out_dir, device=device, threads=threads)['report']}")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for line in human:
            click.echo(line)


def format_report(report: dict) -> str:
    tag = "  [SUPERVISED oracle]" if report["supervised"] else ""
    lines = [f"{report['learner']} on {report['data']} ({report['artifact']}){tag}"]
    if report.get("benchmark") == "omniglot-lake-runs":
        runs = " ".join(f"{e:.0f}" for e in report["per_run_error"].values())
        lines.append(f"  Lake et al. 20 runs of 20-way 1-shot: error {report['error']:.2f}% (per run: {runs})")
    for r in report.get("results", []):
        lines.append(f"  {r['ways']:>3}-way {r['shots']}-shot: {r['accuracy']:6.2f}% +- {r['ci95']:.2f} "
                     f"({r['tasks']} tasks, {r['queries']} queries)")
    return "\n".join(lines)

