"""The regressor's Prefect flow, which only orchestrates: generate-data -> check-for-changes -> (skip, or) features
-> fit -> (evaluate | export-onnx) -> validate-onnx -> (sign, with a key) -> promote. Each task is one stage of
`prefect_wandb` (one W&B run, one run of the lineage store); the files of features, fit, evaluate and export-onnx
are made by `steps.REBUILDERS`, the functions `reproduce` re-runs."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
from prefect import flow, task
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict, Field

from examples.regressor import steps
from prefect_wandb import (
    ArtifactRef,
    GatePolicy,
    LineageSettings,
    LineageStore,
    WandbSettings,
    compare_with_production,
    open_stage,
    promote,
    write_json,
)

REPO = Path(__file__).resolve().parents[2]
MODEL, SIGN_KEY_ENV = "ridge", "REGRESSOR_SIGN_KEY"


class RegressorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int = Field(400, ge=40, le=10_000_000, description="rows of the synthetic dataset (3/4 train)")
    seed: int = Field(0, ge=0, description="seeds the dataset")
    degree: int = Field(2, ge=1, le=4, description="polynomial degree of the features")
    alpha: float = Field(1.0, ge=0, description="ridge penalty")
    margin: float = Field(0.0, ge=0, description="RMSE a candidate must beat production by")
    atol: float = Field(1e-3, gt=0, description="max |onnxruntime - numpy| prediction difference")
    force: bool = Field(False, description="fit even when nothing changed")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    root: Path = Field(Path("regressor-runs"), description="holds lineage.db and artifacts/")
    sign_key: Path | None = Field(None, description=f"EC private key to sign the ONNX file (else ${SIGN_KEY_ENV})")

    def lineage(self) -> LineageSettings:
        return LineageSettings(store=self.root / "lineage.db", artifacts=self.root / "artifacts", code_root=REPO,
                               wandb=WandbSettings(project="regressor-lineage", mode=self.wandb_mode))


def _stage(cfg: RegressorConfig, job: str):
    return open_stage(cfg.lineage(), job, config=cfg, seed=cfg.seed)


def _made(cfg: RegressorConfig, job: str, name: str, kind: str, *inputs: ArtifactRef, meta=None) -> ArtifactRef:
    """A stage whose files are `steps.REBUILDERS[job]` of its inputs; `meta(out)`: the output's metadata."""
    with _stage(cfg, job) as stage:
        replay = SimpleNamespace(job_type=job, config=cfg.model_dump(mode="json"), metadata={}, summary={}, env={},
                                 inputs={r.type: stage.use(r) for r in inputs}, threads=None)
        out = stage.staging(name)
        steps.REBUILDERS[job](replay, out)
        stage.summary = meta(out) if meta else {}
        stage.log({k: v for k, v in stage.summary.items() if isinstance(v, float)})
        stage.produce(name, kind, out, stage.summary)
    return stage.outputs[kind]


@task(name="generate-data")
def generate_data(cfg: RegressorConfig) -> ArtifactRef:
    with _stage(cfg, "generate-data") as stage:
        out = stage.staging("houses")
        stage.produce("houses", "dataset", out, steps.generate(cfg.model_dump(), out))
    return stage.outputs["dataset"]


@task(name="check-for-changes")
def check_for_changes(cfg: RegressorConfig, dataset: ArtifactRef):
    return compare_with_production(LineageStore(cfg.lineage().resolved().store), MODEL, dataset.digest,
                                   dataset.label, steps.fingerprint(cfg.model_dump()))


@task(name="features")
def features(cfg, dataset):
    return _made(cfg, "features", "houses-features", "features", dataset,
                 meta=lambda out: {k: v for k, v in steps.load(out, "transform.json").items() if k != "exponents"})


@task(name="fit")
def fit(cfg, dataset, feats):
    return _made(cfg, "fit", MODEL, "model", dataset, feats, meta=lambda out: {"fingerprint": steps.fingerprint(
        cfg.model_dump())})


@task(name="evaluate")
def evaluate(cfg, model, dataset):
    return _made(cfg, "evaluate", f"{MODEL}-metrics", "metrics", model, dataset,
                 meta=lambda out: steps.load(out, "metrics.json"))


@task(name="export-onnx")
def export_onnx(cfg, model):
    return _made(cfg, "export-onnx", f"{MODEL}-onnx", "onnx", model, meta=lambda out: {"opset": steps.OPSET})


@task(name="validate-onnx")
def validate_onnx(cfg: RegressorConfig, onnx_model: ArtifactRef, model: ArtifactRef, dataset: ArtifactRef):
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
def sign(cfg: RegressorConfig, key: Path, onnx_model, model, dataset, validation) -> ArtifactRef:
    from prefect_wandb.provenance import attest
    from prefect_wandb.provenance.statement import ProvenanceInputs, Resource

    def res(rec, file=None):
        digest = {f.relpath: f.sha256 for f in rec.files}[file] if file else rec.digest
        return Resource(name=file or rec.label, digest={"sha256": digest}, uri=f"regressor-lineage:{rec.type}/"
                        f"{rec.name}@sha256:{rec.digest}", annotations={"artifact": rec.label})
    with _stage(cfg, "sign") as stage:
        onnx_rec, model_rec, data_rec, valid_rec = (stage.record(r) for r in (onnx_model, model, dataset, validation))
        if not valid_rec.metadata.get("passed"):
            raise ValueError(f"{validation.label} failed: an ONNX file that did not validate is not attested")
        env = stage.store.run(onnx_rec.producer_run_id).env
        commit = env.get("git_commit")
        inputs = ProvenanceInputs(
            subject_name="model.onnx", subject_sha256={f.relpath: f.sha256 for f in onnx_rec.files}["model.onnx"],
            external_parameters={"config": cfg.model_dump(mode="json")}, internal_parameters={"seed": cfg.seed},
            dataset=res(data_rec), raw_files=[], model_file=res(model_rec, "model.json"),
            code=Resource(name="examples.regressor", digest={"gitCommit": commit} if commit else {},
                          uri="urn:prefect-wandb:examples.regressor", annotations={"dirty": env.get("git_dirty")}),
            packages=dict(env.get("packages") or {}), builder_id="urn:prefect-wandb:examples.regressor",
            invocation_id=stage.flow_run_id, started_on=datetime.fromisoformat(stage.store.run(
                model_rec.producer_run_id).started_at).astimezone(timezone.utc),
            finished_on=datetime.now(timezone.utc), byproducts=[res(valid_rec, "validation.json")])
        out = stage.staging(f"{onnx_model.name}-attestation")
        index = attest.write(Path(onnx_rec.path) / "model.onnx", key, out, inputs,
                             onnx_artifact={"name": onnx_rec.name, "digest": onnx_rec.digest})
        stage.produce(out.name, "attestation", out, index)
    return stage.outputs["attestation"]


@task(name="promote")
def promote_model(cfg: RegressorConfig, dataset: ArtifactRef, model: ArtifactRef, metrics: ArtifactRef,
                  validation: ArtifactRef):
    with _stage(cfg, "promote") as stage:
        model_id = stage.record(model).artifact_id
        decision = promote(stage.store, model_id, value=stage.record(metrics).metadata["rmse"],
                           validation_passed=bool(stage.record(validation).metadata["passed"]),
                           policy=GatePolicy(metric="rmse", higher_is_better=False, margin=cfg.margin),
                           flow_run_id=stage.flow_run_id, test_set=(dataset.label, dataset.digest), force=cfg.force)
        if stage.set_aliases(model, decision.aliases):
            stage.store.mark_promotion_applied(decision.promotion_id)
        stage.summary = {"decision": decision.decision, "reason": decision.reason}
    return stage.summary


def _where(*refs: ArtifactRef | None) -> dict:
    return {r.type: {"label": r.label, "digest": r.digest, "path": r.path} for r in refs if r is not None}


@flow(name="regressor-lineage", description="Fit a ridge regressor on synthetic house prices, export and validate "
      "ONNX, sign it given a key, and promote it when its test RMSE beats production's; skips an unchanged rerun.")
def regressor_pipeline(config: RegressorConfig = RegressorConfig()):  # noqa: B008 - frozen: safe to share
    cfg = config
    key = cfg.sign_key or (Path(os.environ[SIGN_KEY_ENV]) if os.environ.get(SIGN_KEY_ENV) else None)
    dataset = generate_data(cfg)
    check = check_for_changes(cfg, dataset)
    if not check.changed and not cfg.force and (check.decided or check.model == check.production):
        reason = f"fit skipped: {check.reason} (to refit: --force)"
        return Completed(message=reason, data={"status": "skipped", "reason": reason, "production": check.production,
                                               "artifacts": _where(dataset)})
    model = fit(cfg, dataset, features(cfg, dataset))
    metrics_future = evaluate.submit(cfg, model, dataset)
    onnx_model = export_onnx(cfg, model)
    metrics = metrics_future.result()
    validation = validate_onnx(cfg, onnx_model, model, dataset)
    v = LineageStore(cfg.lineage().resolved().store).require_artifact(validation.name, validation.digest).metadata
    signed = sign(cfg, key, onnx_model, model, dataset, validation) if key and v["passed"] else None
    decision = promote_model(cfg, dataset, model, metrics, validation)
    return {"status": "completed", "reason": check.reason, "promotion": decision, "validation": v,
            "artifacts": _where(dataset, model, metrics, onnx_model, validation, signed),
            "onnx_file": str(Path(onnx_model.path) / "model.onnx"), "lineage_db": str(cfg.lineage().resolved().store)}
