"""The pipeline's own questions of the lineage store: what its records (`results.py`) mean, read back."""

from __future__ import annotations

from typing import Protocol, TypeVar

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import ModelInfo, TrainingResult
from prefect_wandb import ArtifactRecord, ArtifactRef, LineageStore, evaluations

R = TypeVar("R", covariant=True)


class FromMetadata(Protocol[R]):
    def from_metadata(self, metadata: dict | None) -> R: ...


def recorded(cfg: PipelineConfig, ref: ArtifactRef, kind: FromMetadata[R]) -> R:
    """What a stage recorded about an artifact version, typed (`kind`: a record of results.py, e.g. MetricsResult)."""
    return kind.from_metadata(cfg.lineage().open_store().require_artifact(ref.name, ref.digest).metadata)


def finished_model(cfg: PipelineConfig, name: str, digest: str) -> ArtifactRef:
    """The reference of a finished model already in the store (a reuse: the gate never saw it)."""
    return cfg.lineage().open_store().require_artifact(name, digest).ref()


def train_seconds(store: LineageStore, model: ArtifactRecord) -> float | None:
    """How long a model's training loop took: a fact of its train run (its summary), not of the model's files."""
    run = store.run(model.producer_run_id)
    return TrainingResult.from_metadata(run.summary).train_seconds if run is not None else None


def finished_trial(store: LineageStore, model_name: str, dataset_digest: str,
                   fingerprint: dict) -> tuple[ArtifactRecord, ArtifactRecord] | None:
    """(model, metrics) of the newest finished training of `model_name` on this dataset with this training
    fingerprint that has a finished evaluation; or None."""
    for model in reversed(store.artifacts("model")):
        if model.name != model_name or ModelInfo.from_metadata(model.metadata).fingerprint != fingerprint:
            continue
        if [i["digest"] for i in model.inputs("dataset")] != [dataset_digest]:
            continue
        evaluated = evaluations(store, model.artifact_id)
        if evaluated:
            return model, evaluated[-1]
    return None
