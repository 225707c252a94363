from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import ValidationError

from mnist_pipeline import changes
from mnist_pipeline.config import PipelineConfig, TrainConfig
from mnist_pipeline.results import MetricsResult, ValidationResult
from mnist_pipeline.tasks._common import pipeline_stage
from mnist_pipeline.tasks.evaluate import evaluate
from mnist_pipeline.tasks.train import MODEL_NAME
from prefect_wandb import (
    ArtifactRecord,
    ArtifactRef,
    ChangeCheck,
    LineageStore,
    PromotionRecord,
    Signature,
    local_folder,
    measured_on,
)


@task(name="check-for-changes")
def check_for_changes(cfg: PipelineConfig, dataset: ArtifactRef) -> ChangeCheck:
    """Compare the dataset digest and training config with those of every finished model (production's first)."""
    check = changes.check(cfg, LineageStore(cfg.lineage_db), dataset)
    state = "changed" if check.changed else "unchanged" if check.decided or check.model == check.production \
        else "reusing " + str(check.model)
    get_run_logger().info("%s: %s", state, check.reason)
    return check


def _signature(cfg: PipelineConfig, store: LineageStore, validation: ArtifactRef,
               attestation: ArtifactRef | None) -> Signature | None:
    """With `promotion.require_signature`: does the candidate's ONNX file verify against this run's attestation,
    with the public half of this run's signing key? (None: not required.)"""
    if not cfg.promotion.require_signature:
        return None
    key = cfg.signing_key()
    if attestation is None or key is None:
        return Signature(False, "this run's sign stage made none" + ("" if key else ": no signing key"))
    from prefect_wandb.provenance import keys
    from prefect_wandb.provenance.verify import VERIFIED, verify

    onnx = next(iter(store.require_artifact(validation.name, validation.digest).inputs("onnx")), None)
    rec = store.find_artifact(onnx["name"], onnx["digest"]) if onnx else None
    if rec is None:
        return Signature(False, f"{validation.label} names no recorded ONNX file")
    with tempfile.TemporaryDirectory(prefix="mnist-gate-") as tmp:
        pub = Path(tmp) / "signing.pub"
        pub.write_bytes(keys.public_pem(keys.load_private(key).public_key()))
        result = verify(local_folder(rec.path, rec.files) / "model.onnx", pub, attestation=local_folder(attestation.path))
    if result.status == VERIFIED:
        return Signature(True, result.key_fingerprint)
    why = result.note or "; ".join(c.detail for c in result.failed)
    return Signature(False, f"{attestation.label} does not verify {rec.label}: {why}")


def _trained_as(cfg: PipelineConfig, store: LineageStore, model: ArtifactRecord) -> PipelineConfig:
    """`cfg` with the training settings of the run that made `model`: an evaluation of production is recorded (in
    the store and in its W&B run's config) with the settings of the model it evaluates, not of this run."""
    made_by = next((store.run(r) for r in store.producers(model.artifact_id)), None)
    try:
        train = TrainConfig.model_validate(made_by.config["train"]) if made_by else None
    except (KeyError, TypeError, ValidationError):
        train = None
    return cfg.model_copy(update={"train": train}) if train is not None else cfg


def _like_for_like(cfg: PipelineConfig, model: ArtifactRef, metrics: ArtifactRef, logger):
    """The candidate's test set, as (label, digest), and, when the production model has never been evaluated on it,
    production's evaluation there: an evaluate stage of its own (a metrics artifact with its lineage), so that the
    gate compares two accuracies measured on the same data."""
    store = LineageStore(cfg.lineage_db)
    rec = store.find_artifact(metrics.name, metrics.digest)
    ds = next(iter(rec.inputs("dataset")), None) if rec else None
    if ds is None:
        return None, None, ""
    test_set = (f"{ds['name']}:v{ds['version']}", ds["digest"])
    prod = store.alias(MODEL_NAME, "production")
    if prod is None or prod.digest == model.digest or measured_on(store, prod.artifact_id, ds["digest"], cfg.gate()):
        return test_set, None, ""
    data = store.find_artifact(ds["name"], ds["digest"])
    logger.info("production %s:v%d was never evaluated on %s, the candidate's test set: evaluating it there",
                prod.name, prod.version, test_set[0])
    try:
        if data is None:
            raise LookupError(f"{test_set[0]} is not in the lineage store")
        out = evaluate.fn(_trained_as(cfg, store, prod), prod.ref(), data.ref())
    except Exception as e:  # production's files gone or changed: no like-for-like comparison, said in the reason
        logger.warning("could not evaluate production %s:v%d on %s: %s", prod.name, prod.version, test_set[0], e)
        return test_set, None, f"evaluating production on {test_set[0]} failed: {type(e).__name__}: {e}"
    return test_set, out, ""


@task(name="promote")
def promote(cfg: PipelineConfig, model: ArtifactRef, metrics: ArtifactRef, validation: ArtifactRef,
            attestation: ArtifactRef | None = None) -> PromotionRecord:
    """Alias the model `candidate`, and `production` if it validated and beats production by the margin.

    The decision is one transaction in the lineage store (two racing flow runs cannot both win); online, the
    aliases are also moved in W&B (and the model linked into the registry if configured), offline they wait
    for `mnist-pipeline sync`. `attestation`: this run's sign stage's, which `promotion.require_signature` needs."""
    logger = get_run_logger()
    test_set, reevaluated, note = _like_for_like(cfg, model, metrics, logger)
    with pipeline_stage(cfg, "promote") as stage:
        stage.record(model)  # the first input: the model the gate decides about
        acc = MetricsResult.from_metadata(stage.record(metrics).metadata).test_accuracy
        passed = bool(ValidationResult.from_metadata(stage.record(validation).metadata).passed)
        store = stage.store
        # production's evaluation made for this decision, named in the reason; whichever metrics production's value
        # is read from (this one, or an earlier evaluation on the same test set), the gate makes it an input
        measured = {store.require_artifact(reevaluated.name, reevaluated.digest).artifact_id: reevaluated.label} \
            if reevaluated is not None else None
        if attestation is not None and cfg.promotion.require_signature:  # the decision rests on it
            stage.record(attestation)
        decision = stage.promote(model, value=acc, validation_passed=passed, policy=cfg.gate(), test_set=test_set,
                                 registry_path=cfg.promotion.registry_path, note=note, reevaluated=measured,
                                 force=cfg.force, signature=_signature(cfg, store, validation, attestation),
                                 unreject_hint="mnist-pipeline unreject")
        promoted = decision.decision == "promoted"
        stage.summary = {f"promotion_{k}": v for k, v in asdict(decision).items()}
    logger.info("%s %s: %s", model.label, "promoted to production" if promoted else "stays candidate",
                decision.reason)
    return decision
