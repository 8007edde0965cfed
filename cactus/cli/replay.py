"""``cactus run --config FILE.h5``: replay the stages that made an artifact, then evaluate and print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.stages.replay import replay


def replay_run(values: dict[str, Any]) -> dict[str, Any]:
    """``cactus run --config FILE.h5``: replay, evaluate like ``cactus run`` and print the same summary.

    values: the ``run`` command's options; only ``replay`` (the artifact), ``out_dir`` [its folder],
    ``device``, ``threads``, ``force``, the ``eval_*`` options, ``seed``, ``as_json`` and ``write_report``
    are used; everything that enters a key comes from the artifacts.
    """
    import json
    import time

    import click

    from cactus.cli.options import int_list
    from cactus.cli.output import format_report, write_json
    from cactus.stages.evaluate import run_evaluate

    started = time.monotonic()
    source = Path(values["replay"])
    out_dir = Path(values["out_dir"] or source.parent)
    stages, written = replay(source, out_dir, values["device"], values["threads"], values["force"])
    for stage in stages:
        log.info(f"{stage.stage}: {'reused' if stage.skipped else f'{stage.seconds:.1f} s'} -> {stage.path}"
                 f"{'' if stage.summary['same_key'] else ' (KEY DIFFERS from the original)'}")
    ways, shots = int_list(None, None, values["eval_ways"]), int_list(None, None, values["eval_shots"])
    reports = [run_evaluate(written[stage], learner, ways, shots, values["eval_queries"], values["eval_tasks"],
                            values["seed"], values["device"], values["threads"])
               for stage, learner in (("meta", None), ("embed", "knn")) if stage in written and "meta" in written]
    summary = {"out_dir": str(out_dir), "replayed": str(source), "stages": [s.as_dict() for s in stages],
               "evaluation": reports, "same_key": all(s.summary["same_key"] for s in stages),
               "seconds": round(time.monotonic() - started, 1)}
    if reports:
        write_json(out_dir / "evaluation.json", summary)
    if values.get("write_report"):
        from cactus.report.build import build_report

        log.info(f"report: wrote {build_report(out_dir, device=values['device'], threads=values['threads'])['report']}")
    if values["as_json"]:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for stage in stages:
            click.echo(f"{stage.stage}: {stage.path} key {stage.key[:12]} "
                       f"{'= original' if stage.summary['same_key'] else 'DIFFERS from the original'}")
        for report in reports:
            click.echo(format_report(report))
    return summary
