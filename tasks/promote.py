from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.promotion import ChangeCheck, compare_with_production
from mnist_pipeline.lineage.promotion import promote as apply_gate
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.store import LineageStore, PromotionRecord
from tasks._common import current_flow_run_id
from tasks.train import MODEL_NAME


@task(name="check-for-changes")
def check_for_changes(cfg: PipelineConfig, dataset: ArtifactRef) -> ChangeCheck:
    """Compare the dataset digest and training config with those that made the production model."""
    check = compare_with_production(LineageStore(cfg.lineage_db), MODEL_NAME, dataset.digest, dataset.label,
                                    cfg.training_fingerprint())
    get_run_logger().info("%s: %s", "changed" if check.changed else "unchanged", check.reason)
    return check


@task(name="promote")
def promote(cfg: PipelineConfig, model: ArtifactRef, metrics: ArtifactRef, validation: ArtifactRef) -> PromotionRecord:
    """Alias the model `candidate`, and `production` if it validated and beats production by the margin.

    The decision is one transaction in the lineage store (two racing flow runs cannot both win); online, the
    aliases are also moved in W&B (and the model linked into the registry if configured), offline they wait
    for `mnist-pipeline sync`."""
    logger = get_run_logger()
    with open_stage(cfg, "promote", current_flow_run_id()) as stage:
        stage.use(model)
        acc = stage.record(metrics).metadata.get("test_accuracy")
        passed = bool(stage.record(validation).metadata.get("passed"))
        store = stage.store
        model_id = store.find_artifact(model.name, model.digest).artifact_id
        decision = apply_gate(store, model_id, accuracy=acc, validation_passed=passed, margin=cfg.promotion.margin,
                              flow_run_id=current_flow_run_id())
        promoted = decision.decision == "promoted"
        if stage.set_aliases(model, decision.aliases, registry_path=cfg.promotion.registry_path if promoted else None):
            store.mark_promotion_applied(decision.promotion_id)
        stage.summary = {f"promotion_{k}": v for k, v in asdict(decision).items()}
    logger.info("%s %s: %s", model.label, "promoted to production" if promoted else "stays candidate",
                decision.reason)
    return decision
