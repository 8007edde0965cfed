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


def stored_settings(artifact: Artifact, device: str, threads: int | None) -> Any:
    """The declared settings (:mod:`cactus.stages.configs`) that ``artifact``'s stored config gives.

    Checked like options on the command line; a key this version does not declare, one it needs
    that the artifact lacks, or a value out of range is one error line saying to recompute.
    ``device`` / ``threads`` (not part of any key) are the caller's; without ``threads``, an embed or meta
    artifact is replayed on the thread count it recorded, so its weights come out identical. For an embed
    artifact: the
    dataset reference, the method and the encoder's stored parameters (the encoder checks them).
    """
    config, where = artifact.config, artifact.path
    if threads is None and artifact.stage in ("embed", "meta"):  # the same float sums as the original
        recorded = artifact.attrs.get("torch_threads")
        threads = recorded if isinstance(recorded, int) and 1 <= recorded <= 1024 else None
    if artifact.stage == "embed":
        params = dict(config.get("encoder") or {}) if isinstance(config.get("encoder"), dict) else {}
        method = params.pop("method", None)
        if method is None:
            raise CactusError(f"{where}: its embed config names no encoder method; recompute it")
        return DataRef.from_dict(config.get("data"), where), method, {**params,
                                                                      **runtime_options(method, device, threads)}
    if artifact.stage == "cluster":  # before the relaxed engine there was faiss's; train_sample is derived
        return from_stored(ClusterConfig, config, where, "cluster", {"threads": threads},
                           old_defaults={"engine": "faiss"}, derived=("train_sample",))
    if artifact.stage == "tasks":
        return from_stored(TasksConfig, config, where, "tasks")
    learner = dict(config["learner"]) if isinstance(config.get("learner"), dict) else {}
    if "algo" not in learner:
        raise CactusError(f"{where}: its meta config has no learner; recompute it")
    learner.pop("ways", None)  # the tasks fix it
    learner.pop("encoder", None)  # --init-from: the embed artifact among its inputs (see replay_stage)
    fixed: dict[str, Any] = {"device": device, "threads": threads}
    if config.get("tasks_from") == "labels":
        oracle = config.get("oracle_tasks")
        if not isinstance(oracle, dict):
            raise CactusError(f"{where}: an oracle learner without its oracle_tasks; recompute it")
        fixed.update(oracle)
        fixed.update(DataRef.from_dict(artifact.attrs.get("data"), where).as_dict())
    unknown = sorted(set(learner) - {entry.field for entry in declared(MetaConfig, key="learner")})
    if unknown:
        raise CactusError(f"{where}: its learner config has {', '.join(unknown)}, not an option of this version "
                          "of cactus; recompute it")
    top = {k: v for k, v in config.items() if k not in ("learner", "oracle_tasks")}
    return from_stored(MetaConfig, top, where, "meta", {**fixed, **learner})


def replay_stage(artifact: Artifact, settings: Any, out: Path, previous: Path | None, force: bool,
                 replayed: dict[str, Path] | None = None) -> StageResult:
    """Run ``artifact``'s stage again with ``settings`` (:func:`stored_settings`), writing ``out``.

    previous: the replayed input artifact; replayed: {original key: replayed path} of the chain so far.
    """
    replayed = replayed or {}
    if artifact.stage == "embed":
        from cactus.stages.embed import run_embed

        data, method, params = settings
        encoder_file = find_input(artifact, "embed").path if artifact.config.get("encoder_from") else None
        return run_embed(out, data, method, params, encoder_file, force)
    if artifact.stage == "cluster":
        from cactus.stages.cluster import run_cluster

        return run_cluster(out, previous, settings, force=force)
    if artifact.stage == "tasks":
        from cactus.stages.tasks import run_tasks

        return run_tasks(out, previous, settings, force=force)
    from cactus.stages.meta import meta_stage

    init_from = None
    if artifact.config["learner"].get("encoder") is not None:  # ProtoNets started from an embed artifact's encoder
        source = find_input(artifact, "embed")
        init_from = replayed.get(source.key, source.path)
    return meta_stage(out, None if settings.tasks_from == "labels" else previous, settings, init_from, force)


def replay(path: Path, out_dir: Path, device: str = "auto", threads: int | None = None,
           force: bool = False) -> tuple[list[StageResult], dict[str, Path]]:
    """Replay the chain that produced ``path`` into ``out_dir`` (same file names).

    Returns the stage results and {stage: written path}. A stage whose new key differs from the
    stored one (the code or the dataset changed since) is reported with a warning.
    """
    artifacts = chain(Path(path))
    plan = [stored_settings(artifact, device, threads) for artifact in artifacts]  # every config checked first
    log.info(f"replay: re-running the {len(artifacts)} stages that produced {path} into {out_dir}")
    results: list[StageResult] = []
    written: dict[str, Path] = {}
    by_key: dict[str, Path] = {}
    previous: Path | None = None
    for artifact, settings in zip(artifacts, plan, strict=True):
        out = Path(out_dir) / artifact.path.name
        result = replay_stage(artifact, settings, out, previous, force, by_key)
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
