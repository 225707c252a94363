"""The flow only orchestrates: generate-data -> check-for-changes -> (skip, or) features -> fit -> (evaluate |
export-onnx) -> validate-onnx -> (sign, given a key) -> promote; each task is one `prefect_wandb` stage. features,
fit, evaluate and export-onnx write their files with `steps.REBUILDERS`, which `reproduce` re-runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.states import Completed, State

from examples.regressor import steps
from examples.regressor.steps import RegressorConfig
from prefect_wandb import (
    ArtifactRef,
    ChangeCheck,
    GatePolicy,
    compare_with_production,
    local_folder,
    measured_on,
    open_stage,
    write_json,
)
from prefect_wandb.provenance import attest

MODEL, SIGN_KEY_ENV = "ridge", "REGRESSOR_SIGN_KEY"


def _stage(cfg: RegressorConfig, job: str):
    return open_stage(cfg.lineage(), job, config=cfg, seed=cfg.seed)


def _made(cfg: RegressorConfig, job: str, name: str, kind: str, *inputs: ArtifactRef, meta=dict) -> ArtifactRef:
    """A stage whose files are `steps.REBUILDERS[job]` of its inputs (what reproduce re-runs); `meta(out)`: the
    output's metadata, also the run's summary and logged to W&B."""
    with _stage(cfg, job) as stage:
        out = stage.rebuild(steps.REBUILDERS[job], name, kind, *inputs, metadata=meta)
        stage.summary = meta(out)
        stage.log({k: v for k, v in stage.summary.items() if isinstance(v, float)})
    return stage.outputs[kind]


@task(name="generate-data")
def generate_data(cfg: RegressorConfig) -> ArtifactRef:
    with _stage(cfg, "generate-data") as stage:
        out = stage.staging("houses")
        stage.produce("houses", "dataset", out, steps.generate(cfg.model_dump(), out))
    return stage.outputs["dataset"]


@task(name="check-for-changes")
def check_for_changes(cfg: RegressorConfig, dataset: ArtifactRef) -> ChangeCheck:
    return compare_with_production(cfg.lineage().open_store(), MODEL, dataset.digest, dataset.label,
                                   steps.fingerprint(cfg.model_dump()))


@task(name="features")
def features(cfg: RegressorConfig, dataset: ArtifactRef) -> ArtifactRef:
    return _made(cfg, "features", "houses-features", "features", dataset, meta=lambda out: {
        k: v for k, v in steps.load(out, "transform.json").items() if k != "exponents"})


@task(name="fit")
def fit(cfg: RegressorConfig, dataset: ArtifactRef, feats: ArtifactRef) -> ArtifactRef:
    return _made(cfg, "fit", MODEL, "model", dataset, feats, meta=lambda out: {
        "fingerprint": steps.load(out, "model.json")["fingerprint"]})


@task(name="evaluate")
def evaluate(cfg: RegressorConfig, model: ArtifactRef, dataset: ArtifactRef) -> ArtifactRef:
    return _made(cfg, "evaluate", f"{MODEL}-metrics", "metrics", model, dataset,
                 meta=lambda out: steps.load(out, "metrics.json"))


@task(name="export-onnx")
def export_onnx(cfg: RegressorConfig, model: ArtifactRef) -> ArtifactRef:
    return _made(cfg, "export-onnx", f"{MODEL}-onnx", "onnx", model, meta=lambda out: {"opset": steps.OPSET})


@task(name="validate-onnx")
def validate_onnx(cfg: RegressorConfig, onnx_model: ArtifactRef, model: ArtifactRef,
                  dataset: ArtifactRef) -> ArtifactRef:
    import onnxruntime

    with _stage(cfg, "validate-onnx") as stage:
        x, _ = steps.split(stage.use(dataset), "test")
        session = onnxruntime.InferenceSession(str(stage.use(onnx_model) / "model.onnx"))
        got = session.run(None, {steps.INPUT: x.astype(np.float32)})[0][:, 0]
        diff = float(np.abs(got - steps.predict(steps.load(stage.use(model), "model.json"), x)).max())
        stage.summary = {"passed": diff <= cfg.atol, "max_abs_diff": diff, "atol": cfg.atol, "rows": len(x)}
        out = stage.staging(f"{MODEL}-onnx-validation")
        write_json(out / "validation.json", stage.summary)
        stage.produce(out.name, "validation", out, stage.summary)
    return stage.outputs["validation"]


@task(name="sign")
def sign(cfg: RegressorConfig, key: Path, onnx_model: ArtifactRef, model: ArtifactRef, dataset: ArtifactRef,
         validation: ArtifactRef) -> ArtifactRef:
    with _stage(cfg, "sign") as stage:
        records = (stage.record(r) for r in (onnx_model, model, dataset, validation))
        signing = attest.Attestation.of(stage, *records, scheme="regressor-lineage", code="examples.regressor",
                                        model_file="model.json", internal_parameters={"seed": cfg.seed})
        out = stage.staging(f"{onnx_model.name}-attestation")
        stage.produce(out.name, "attestation", out, signing.write(key, out))
    return stage.outputs["attestation"]


@task(name="promote")
def promote_model(cfg: RegressorConfig, dataset: ArtifactRef, model: ArtifactRef, metrics: ArtifactRef,
                  validation: ArtifactRef) -> dict:
    """The RMSE gate, like for like: production never measured on this run's test set is evaluated there first."""
    store, policy = cfg.lineage().open_store(), GatePolicy(metric="rmse", higher_is_better=False, margin=cfg.margin)
    prod, again = store.alias(MODEL, "production"), None
    if prod and prod.digest != model.digest and not measured_on(store, prod.artifact_id, dataset.digest, policy):
        fp = prod.metadata["fingerprint"]  # on record: production's model settings, this run's data
        again = evaluate.fn(cfg.model_copy(update={"alpha": fp["alpha"], "degree": fp["degree"]}), prod.ref(), dataset)
    with _stage(cfg, "promote") as stage:
        decision = stage.promote(model, value=stage.record(metrics).metadata["rmse"], policy=policy, test_set=dataset,
                                 validation_passed=bool(stage.record(validation).metadata["passed"]), force=cfg.force,
                                 reevaluated={stage.record(again).artifact_id: again.label} if again else None)
        stage.summary = {"decision": decision.decision, "reason": decision.reason}
    return stage.summary


@flow(name="regressor-lineage", description="Fit a ridge regressor of synthetic house prices, export and validate "
      "ONNX, sign it given a key, promote it when its test RMSE beats production's; skip an unchanged rerun.")
def regressor_pipeline(config: RegressorConfig = RegressorConfig()) -> dict | State:  # noqa: B008 - frozen
    cfg = config.model_copy(update={"root": config.root.resolve()})  # on record as an absolute path
    store = cfg.lineage().open_store()
    key = cfg.sign_key or (Path(os.environ[SIGN_KEY_ENV]) if os.environ.get(SIGN_KEY_ENV) else None)
    dataset = generate_data(cfg)
    check = check_for_changes(cfg, dataset)
    if check.action == "skip" and not cfg.force:
        reason = f"fit skipped: {check.reason} (to refit: --force)"  # a model never gated is refitted: same bytes
        return Completed(message=reason, data={"status": "skipped", "reason": reason, "production": check.production,
                                               "artifacts": {"dataset": dataset.label}})
    model = fit(cfg, dataset, features(cfg, dataset))
    metrics_future = evaluate.submit(cfg, model, dataset)
    onnx_model = export_onnx(cfg, model)
    metrics = metrics_future.result()
    validation = validate_onnx(cfg, onnx_model, model, dataset)
    v = store.require_artifact(validation.name, validation.digest).metadata
    signed = sign(cfg, key, onnx_model, model, dataset, validation) if key and v["passed"] else None
    decision = promote_model(cfg, dataset, model, metrics, validation)
    return {"status": "completed", "reason": check.reason, "promotion": decision,
            "validation": {k: v[k] for k in ("passed", "max_abs_diff")},
            "rmse": store.require_artifact(metrics.name, metrics.digest).metadata["rmse"],
            "artifacts": {r.type: {"label": r.label, **r.model_dump()} for r in (dataset, model, metrics, onnx_model,
                                                                                 validation, signed) if r},
            "onnx_file": str(local_folder(onnx_model.path) / "model.onnx"), "lineage_db": str(store.path)}
