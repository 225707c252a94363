"""Has anything that decides the model changed? Asked by the flow's check-for-changes task and, before Prefect
starts, by `mnist-pipeline run` (`unchanged_before_prefect`). Pure: no Prefect, no W&B, no torch.

The data's identity before it is prepared is `source_key`: the data settings, the source files (path, size,
mtime) and the stores, the same key Prefect's cache of prepare-data uses; prepare-data records it in the dataset's
metadata (`DatasetInfo.prepared_from`), so a run can find the dataset these sources make without preparing it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mnist_pipeline import __version__, idx
from mnist_pipeline.checkpoint_files import checkpoint_path, discard_checkpoint
from mnist_pipeline.config import DATASET_NAME, MODEL_NAME, PipelineConfig
from mnist_pipeline.results import ArtifactLocation, DatasetInfo, RunSummary
from prefect_wandb import (
    ArtifactRecord,
    ArtifactRef,
    ChangeCheck,
    DigestMismatch,
    LineageStore,
    WandbWhereabouts,
    compare_with_production,
    local_folder,
    verify_files,
)


def _source_files(cfg: PipelineConfig) -> list[Path]:
    d = cfg.data
    if d.source == "local" and d.local_dir is not None:
        return sorted(p for base in (d.local_dir, idx.raw_folder(d.local_dir)) if base.is_dir()
                      for p in base.iterdir() if p.is_file())
    if d.source == "download":
        raw = idx.raw_folder(d.root)
        return sorted(p for p in raw.iterdir() if p.is_file()) if raw.is_dir() else []
    return []  # synthetic data is a pure function of its settings


def source_key(cfg: PipelineConfig) -> str:
    """Same data settings, same source files (path, size, mtime), same stores: the same dataset artifact."""
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _source_files(cfg)]
    blob = json.dumps([__version__, cfg.data.model_dump(mode="json"), cfg.train.classes, str(cfg.artifacts_dir),
                       str(cfg.lineage_db), files], sort_keys=True)
    return "prepare-data-" + hashlib.sha256(blob.encode()).hexdigest()


def stored_problem(store: LineageStore, ref: ArtifactRef | ArtifactRecord) -> str | None:
    """Why the dataset `ref` cannot be used as it is stored (not recorded, deleted by gc, or its files changed),
    else None."""
    rec = store.find_artifact(ref.name, ref.digest)
    if rec is None:
        return "it is no longer in the lineage store"
    if rec.artifact_id in store.deletions():
        return "gc deleted its files"
    try:
        verify_files(local_folder(rec.path, rec.files), rec.files)
    except DigestMismatch as e:
        return f"its stored files no longer match their record ({e})"
    return None


def check(cfg: PipelineConfig, store: LineageStore, dataset: ArtifactRef | ArtifactRecord) -> ChangeCheck:
    """The skip rule for `dataset` and `cfg`'s training settings (`compare_with_production`), the model it names
    re-verified by sha256 (a model whose files changed is made again); a model of these very inputs on record
    discards their leftover training checkpoint."""
    found = compare_with_production(store, MODEL_NAME, dataset.digest, dataset.label, cfg.training_fingerprint())
    if not found.changed and found.model_digest:  # a skip or a reuse vouches for that model's files
        made = store.find_artifact(MODEL_NAME, found.model_digest)
        try:
            if made is not None:
                verify_files(local_folder(made.path, made.files), made.files)
        except DigestMismatch as e:
            whose = f"production {found.production}" if found.model == found.production else found.model
            found = ChangeCheck(True, f"{whose}'s files no longer match their record ({e}); retraining makes a "
                                      "verified copy", found.production)
    if not found.changed and found.model_digest:  # a training killed after its commit left its checkpoint
        discard_checkpoint(checkpoint_path(cfg, dataset, create=False))
    return found


def skip_hint(found: ChangeCheck) -> str:
    """How to make a skipped run train: `--force`, unless the model these inputs made was rejected by a rollback,
    where a forced retrain makes the same model and the gate keeps it candidate: `unreject` is the remedy."""
    if found.decided and found.decided.startswith("rejected by ") and found.model:
        return (f"to let the gate consider {found.model} again: `mnist-pipeline unreject {found.model}`; a forced "
                "retrain would make the same model, which stays rejected")
    return "to retrain: run with --force, or tick the force field in the Prefect form"


def skipped(cfg: PipelineConfig, found: ChangeCheck, dataset: ArtifactRef | ArtifactRecord,
            config_sources: dict, wandb: WandbWhereabouts) -> RunSummary:
    """What a skipped run hands back."""
    return RunSummary(status="skipped", reason=f"training skipped: {found.reason} ({skip_hint(found)})",
                      production=found.production, model=found.model if found.decided else None,
                      artifacts={"dataset": ArtifactLocation.of(dataset)}, lineage_db=str(cfg.lineage_db),
                      config_sources=config_sources, wandb=wandb)


def unchanged_before_prefect(cfg: PipelineConfig) -> tuple[ChangeCheck, ArtifactRecord] | None:
    """(the skip, the dataset) when a run of `cfg` would only find that nothing changed, decided from the store
    alone: the dataset these very sources made (`source_key`) is on record with its files intact, and the skip
    rule skips (production's model of these inputs, or one already decided). None when a run must go ahead:
    forced, the sources not prepared yet under this key, anything changed, or a model to gate (a reuse)."""
    if cfg.force:
        return None
    store = LineageStore(cfg.lineage_db)
    key = source_key(cfg)
    made = [a for a in store.artifacts("dataset")
            if a.name == DATASET_NAME and DatasetInfo.from_metadata(a.metadata).prepared_from == key]
    if not made or stored_problem(store, made[-1]) is not None:
        return None
    found = check(cfg, store, made[-1])
    return (found, made[-1]) if found.action == "skip" else None
