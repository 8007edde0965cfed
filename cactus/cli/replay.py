"""``cactus run --config FILE.h5``: replay the stages that made an artifact, then evaluate and print."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.stages.replay import replay


def replay_run(source: Path, out_dir: Path | None, force: bool, as_json: bool, write_report: bool,
               values: dict[str, Any]) -> dict[str, Any]:
    """``cactus run --config FILE.h5``: replay, evaluate like ``cactus run`` and print the same summary.

    out_dir: where to write [the artifact's folder]; values: the ``run`` command's options by run
    name, of which only ``device``, ``threads`` and the evaluation's options are used: everything
    that enters a key comes from the artifacts.
    """
    import time

    from cactus.cli.output import finish_run, format_report
    from cactus.stages.configs import EvaluateConfig
    from cactus.stages.evaluate import evaluate_stage
    from cactus.stages.options import build

    started = time.monotonic()
    source = Path(source)
    out_dir = Path(out_dir or source.parent)
    stages, written = replay(source, out_dir, values["device"], values["threads"], force)
    for stage in stages:
        log.info(f"{stage.stage}: {'reused' if stage.skipped else f'{stage.seconds:.1f} s'} -> {stage.path}"
                 f"{'' if stage.summary['same_key'] else ' (KEY DIFFERS from the original)'}")
    evaluation = build(EvaluateConfig, values, by="run")
    reports = [evaluate_stage(written[stage], replace(evaluation, learner=learner))
               for stage, learner in (("meta", None), ("embed", evaluation.learner or "knn"))
               if stage in written and "meta" in written]
    summary = {"out_dir": str(out_dir), "replayed": str(source), "stages": [s.as_dict() for s in stages],
               "evaluation": reports, "same_key": all(s.summary["same_key"] for s in stages),
               "seconds": round(time.monotonic() - started, 1)}
    human = [f"{stage.stage}: {stage.path} key {stage.key[:12]} "
             f"{'= original' if stage.summary['same_key'] else 'DIFFERS from the original'}" for stage in stages]
    finish_run(out_dir, summary, human + [format_report(report) for report in reports], as_json, write_report,
               values["device"], values["threads"], evaluated=bool(reports))
    return summary
