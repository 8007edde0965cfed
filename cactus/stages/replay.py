"""Replay: re-run the stages that produced an artifact, from the configs the artifacts store.

Every artifact holds its stage's full config and the keys of its inputs. Walking the inputs
up (the input artifacts are found by key beside the artifact) gives the chain embed -> cluster
-> tasks -> meta; each stage is then run again with exactly its stored config, so it computes
the same key (and, stages being deterministic, the same arrays). Options that do not enter a
key (``device``, ``threads``, ``force``) are the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import Artifact, read_artifact
from cactus.stages.common import DataRef, StageResult
from cactus.stages.configs import ClusterConfig, MetaConfig, TasksConfig, runtime_options
from cactus.stages.options import declared, from_stored

UPSTREAM = {"meta": "tasks", "tasks": "cluster", "cluster": "embed"}


def find_input(artifact: Artifact, stage: str) -> Artifact:
    """The ``stage`` artifact among ``artifact``'s inputs, looked up by key in its folder."""
    wanted = set(artifact.inputs)
    for path in sorted(artifact.path.parent.glob("*.h5")):
        try:
            header = read_artifact(path, arrays=False)
        except CactusError:
            continue
        if header.key in wanted and header.stage == stage:
            return header
    raise CactusError(f"{artifact.path}: its {stage} input (key {', '.join(k[:12] for k in wanted)}) is not in "
                      f"{artifact.path.parent}; replay needs the input artifacts beside it")


def chain(path: Path) -> list[Artifact]:
    """The artifacts that produced ``path``, upstream first, ending with ``path`` itself (headers only)."""
    artifact = read_artifact(path, arrays=False)
    if artifact.stage not in ("embed", "cluster", "tasks", "meta"):
        raise CactusError(f"--config {path}: a '{artifact.stage}' artifact cannot be replayed by cactus run")
    found = [artifact]
    while found[0].stage in UPSTREAM and not (found[0].stage == "meta"
                                               and found[0].config.get("tasks_from") == "labels"):
        found.insert(0, find_input(found[0], UPSTREAM[found[0].stage]))
    return found


def replay_stage(artifact: Artifact, out: Path, previous: Path | None, device: str, threads: int | None,
                 force: bool, replayed: dict[str, Path] | None = None) -> StageResult:
    """Run ``artifact``'s stage again with its stored config, writing ``out``.

    The stored config is turned back into the stage's declared settings (:mod:`cactus.stages.configs`):
    a key this version does not declare, or one it needs that the artifact lacks, is one error line
    saying to recompute. previous: the replayed input artifact; replayed: {original key: replayed
    path} of the chain so far.
    """
    replayed = replayed or {}
    config, where = artifact.config, artifact.path
    if artifact.stage == "embed":
        from cactus.stages.embed import run_embed

        params = dict(config.get("encoder") or {})
        method = params.pop("method", None)
        if method is None:
            raise CactusError(f"{where}: its embed config names no encoder method; recompute it")
        encoder_file = find_input(artifact, "embed").path if config.get("encoder_from") else None
        return run_embed(out, DataRef.from_dict(config.get("data"), where), method,
                         {**params, **runtime_options(method, device, threads)}, encoder_file, force)
    if artifact.stage == "cluster":
        from cactus.stages.cluster import run_cluster

        # artifacts from before the relaxed engine were faiss's; train_sample is derived from the data
        options = from_stored(ClusterConfig, config, where, "cluster", {"threads": threads},
                              old_defaults={"engine": "faiss"}, derived=("train_sample",))
        return run_cluster(out, previous, options, force=force)
    if artifact.stage == "tasks":
        from cactus.stages.tasks import run_tasks

        return run_tasks(out, previous, from_stored(TasksConfig, config, where, "tasks"), force=force)
    from cactus.stages.meta import meta_stage

    learner = dict(config.get("learner") or {}) if isinstance(config.get("learner"), dict) else None
    if learner is None or "algo" not in learner:
        raise CactusError(f"{where}: its meta config has no learner; recompute it")
    learner.pop("ways", None)  # the tasks fix it
    init_from = None
    if learner.pop("encoder", None) is not None:  # --init-from: start from the encoder of an embed artifact
        source = find_input(artifact, "embed")
        init_from = replayed.get(source.key, source.path)
    fixed: dict[str, Any] = {"device": device, "threads": threads}
    if config.get("tasks_from") == "labels":
        oracle = config.get("oracle_tasks")
        if not isinstance(oracle, dict):
            raise CactusError(f"{where}: an oracle learner without its oracle_tasks; recompute it")
        fixed.update(oracle)
        fixed.update(DataRef.from_dict(artifact.attrs.get("data"), where).as_dict())
        previous = None
    top = {k: v for k, v in config.items() if k not in ("learner", "oracle_tasks")}
    learner_fields = {entry.field for entry in declared(MetaConfig, key="learner")}
    unknown = sorted(set(learner) - learner_fields)
    if unknown:
        raise CactusError(f"{where}: its learner config has {', '.join(unknown)}, not an option of this version "
                          "of cactus; recompute it")
    settings = from_stored(MetaConfig, top, where, "meta", {**fixed, **learner})
    return meta_stage(out, previous, settings, init_from, force)


def replay(path: Path, out_dir: Path, device: str = "auto", threads: int | None = None,
           force: bool = False) -> tuple[list[StageResult], dict[str, Path]]:
    """Replay the chain that produced ``path`` into ``out_dir`` (same file names).

    Returns the stage results and {stage: written path}. A stage whose new key differs from the
    stored one (the code or the dataset changed since) is reported with a warning.
    """
    artifacts = chain(Path(path))
    log.info(f"replay: re-running the {len(artifacts)} stages that produced {path} into {out_dir}")
    results: list[StageResult] = []
    written: dict[str, Path] = {}
    by_key: dict[str, Path] = {}
    previous: Path | None = None
    for artifact in artifacts:
        out = Path(out_dir) / artifact.path.name
        result = replay_stage(artifact, out, previous, device, threads, force, by_key)
        if result.key != artifact.key:
            log.warn(f"replay: {artifact.stage} gives key {result.key[:12]}, {artifact.path} has "
                     f"{artifact.key[:12]} (the code or the data changed since it was made)")
        result.summary["replayed_from"] = str(artifact.path)
        result.summary["same_key"] = result.key == artifact.key
        results.append(result)
        written[artifact.stage] = out
        by_key[artifact.key] = out
        previous = out
    return results, written
