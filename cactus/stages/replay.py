"""Replay: re-run the stages that produced an artifact, from the configs the artifacts store.

Every artifact holds its stage's full config and the keys of its inputs. Walking the inputs
up (the input artifacts are found by key beside the artifact) gives the chain embed -> cluster
-> tasks -> meta; each stage is then run again with exactly its stored config, so it computes
the same key (and, stages being deterministic, the same arrays). Options that do not enter a
key (``device``, ``threads``, ``force``) are the caller's.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import Artifact, read_artifact
from cactus.stages.common import DataRef, StageResult

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


def _matching(function, config: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config entries that are parameters of ``function`` (by name)."""
    names = set(inspect.signature(function).parameters) - set(skip)
    unknown = sorted(set(config) - names - set(skip))
    if unknown:
        log.warn(f"replay: stored config keys {', '.join(unknown)} are not options of {function.__name__} any more")
    return {k: v for k, v in config.items() if k in names}


def replay_stage(artifact: Artifact, out: Path, previous: Path | None, device: str, threads: int | None,
                 force: bool, replayed: dict[str, Path] | None = None) -> StageResult:
    """Run ``artifact``'s stage again with its stored config, writing ``out``.

    previous: the replayed input artifact; replayed: {original key: replayed path} of the chain so far.
    """
    replayed = replayed or {}
    config = artifact.config
    if artifact.stage == "embed":
        from cactus.stages.embed import run_embed

        params = dict(config["encoder"])
        method = params.pop("method")
        encoder_file = find_input(artifact, "embed").path if config.get("encoder_from") else None
        return run_embed(out, DataRef.from_dict(config["data"], artifact.path), method, params, encoder_file, force)
    if artifact.stage == "cluster":
        from cactus.stages.cluster import run_cluster

        options = _matching(run_cluster, config, ("out", "embed_file", "force"))
        options.setdefault("engine", "faiss")  # artifacts from before the relaxed engine were faiss's
        return run_cluster(out, previous, **options, force=force)
    if artifact.stage == "tasks":
        from cactus.stages.tasks import run_tasks

        return run_tasks(out, previous, **_matching(run_tasks, config, ("out", "cluster_file", "force")), force=force)
    from cactus.stages.meta import run_meta

    learner = dict(config["learner"])
    algo = learner.pop("algo")
    learner.pop("ways", None)  # the tasks fix it
    if learner.pop("encoder", None) is not None:  # --init-from: start from the encoder of an embed artifact
        source = find_input(artifact, "embed")
        learner["init_from"] = replayed.get(source.key, source.path)
    oracle = None
    if config.get("tasks_from") == "labels":
        oracle = {"data": DataRef.from_dict(artifact.attrs.get("data"), artifact.path), **config["oracle_tasks"]}
        previous = None
    rest = _matching(run_meta, config, ("out", "tasks_file", "algo", "options", "learner", "tasks_from",
                                        "oracle_tasks", "oracle", "device", "threads", "force"))
    return run_meta(out, previous, algo, learner, device=device, threads=threads, force=force, oracle=oracle,
                    **rest)


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
