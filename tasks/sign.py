"""sign: the validated ONNX file's model-signing bundle and its DSSE-signed SLSA Provenance v1 Statement, as one
`attestation` artifact (a copy of the ONNX file beside them, so `mnist-pipeline verify` finds them in that folder;
see `prefect_wandb.provenance.verify` for where else it looks). The private key is read, never copied: only its
public fingerprint goes into the artifact, the store and W&B."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger, task
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run

from mnist_pipeline import __version__
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import AttestationInfo, DatasetInfo, TrainingResult, ValidationResult
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRecord, ArtifactRef, local_folder
from prefect_wandb.provenance import attest
from prefect_wandb.provenance.statement import ProvenanceInputs, Resource

ATTESTATION_NAME = "convnet-onnx-attestation"
SUBJECT = "model.onnx"
BUILD_TYPE = "https://mnist-lineage-pipeline.dev/build/onnx-export/v1"  # what this pipeline's signed build is


def _artifact_uri(rec: ArtifactRecord) -> str:
    return f"mnist-lineage:{rec.type}/{rec.name}@sha256:{rec.digest}"


def _builder_id() -> str:
    name = deployment.name
    if name:
        return f"urn:mnist-lineage-pipeline:prefect-deployment:{flow_run.flow_name}/{name}"
    return "urn:mnist-lineage-pipeline:cli"


def _started_on(fallback: str) -> datetime:
    ctx = FlowRunContext.get()
    start = getattr(getattr(ctx, "flow_run", None), "start_time", None) if ctx else None
    if isinstance(start, datetime):
        return start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    t = datetime.fromisoformat(fallback)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def provenance_inputs(cfg: PipelineConfig, stage, onnx_rec: ArtifactRecord, model_rec: ArtifactRecord,
                      dataset_rec: ArtifactRecord, validation_rec: ArtifactRecord) -> ProvenanceInputs:
    store = stage.store
    train_run, export_run = store.run(model_rec.producer_run_id), store.run(onnx_rec.producer_run_id)
    training = TrainingResult.from_metadata(train_run.summary if train_run else None)
    env = export_run.env if export_run else {}
    files = {f.relpath: f.sha256 for f in onnx_rec.files}
    d = DatasetInfo.from_metadata(dataset_rec.metadata)
    raw = [Resource(name=f["name"], digest={"sha256": f["sha256"]},
                    annotations={"size": f.get("size"), "md5": f.get("md5")}) for f in d.raw_files or []]
    model_files = {f.relpath: f.sha256 for f in model_rec.files}
    figures = ValidationResult.from_metadata(validation_rec.metadata).figures()
    return ProvenanceInputs(
        subject_name=SUBJECT, subject_sha256=files[SUBJECT],
        external_parameters={"config": cfg.model_dump(mode="json")},
        internal_parameters={"seed": cfg.train.seed, "threads": training.threads, "device": training.device},
        dataset=Resource(name=f"{dataset_rec.name}:v{dataset_rec.version}", digest={"sha256": dataset_rec.digest},
                         uri=_artifact_uri(dataset_rec),
                         annotations={"source": d.source, "slice": d.slice, "sizes": d.sizes,
                                      "files": {f.relpath: f.sha256 for f in dataset_rec.files}}),
        raw_files=raw,
        model_file=Resource(name="model.pt", digest={"sha256": model_files["model.pt"]}, uri=_artifact_uri(model_rec),
                            annotations={"artifact": f"{model_rec.name}:v{model_rec.version}"}),
        code=Resource(name="mnist-lineage-pipeline", digest={"gitCommit": env["git_commit"]} if env.get("git_commit")
                      else {}, uri=f"pkg:pypi/mnist-lineage-pipeline@{__version__}",
                      annotations={"dirty": env.get("git_dirty")}),
        packages=dict(env.get("packages") or {}),
        builder_id=_builder_id(), builder_version={"mnist-lineage-pipeline": __version__}, build_type=BUILD_TYPE,
        invocation_id=stage.flow_run_id,
        started_on=_started_on(train_run.started_at if train_run else datetime.now(timezone.utc).isoformat()),
        finished_on=datetime.now(timezone.utc),
        byproducts=[Resource(name="validation.json", digest={"sha256": {f.relpath: f.sha256 for f in
                                                                        validation_rec.files}["validation.json"]},
                             uri=_artifact_uri(validation_rec), annotations=figures)],
    )


def check_key(cfg: PipelineConfig) -> Path | None:
    """The signing key of this run (`sign.private_key`, else $MNIST_PIPELINE_SIGN_KEY), checked to be a usable EC
    private key that only its owner can read (KeyFileError, one line, otherwise: missing or unreadable, a public key,
    encrypted, not EC P-256/384/521 PEM, mode & 0o077); None: the run is not signed. The flow calls it before any
    task; `mnist-pipeline run` and `sweep` make the same check before Prefect is imported (exit 2:
    `mnist_pipeline.cli.main.check_signing_key`)."""
    from prefect_wandb.provenance import keys

    key = cfg.signing_key()
    if key is not None:
        keys.load_private(key)
    return key


@task(name="sign")
def sign(cfg: PipelineConfig, key: Path, onnx_model: ArtifactRef, model: ArtifactRef, dataset: ArtifactRef,
         validation: ArtifactRef) -> ArtifactRef:
    """`key`: the private key's path (`PipelineConfig.signing_key()`)."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    with pipeline_stage(cfg, "sign") as stage:
        onnx_rec = stage.record(onnx_model)
        model_rec, dataset_rec, validation_rec = stage.record(model), stage.record(dataset), stage.record(validation)
        if not ValidationResult.from_metadata(validation_rec.metadata).passed:
            raise ValueError(f"{validation.label} failed: an ONNX file that did not validate is not attested")
        if onnx_model.digest not in {i["digest"] for i in validation_rec.inputs("onnx")}:
            raise ValueError(f"{validation.label} is not the validation of {onnx_model.label}")
        inputs = provenance_inputs(cfg, stage, onnx_rec, model_rec, dataset_rec, validation_rec)
        out = stage.staging(ATTESTATION_NAME)
        t1 = time.perf_counter()
        index = attest.write(local_folder(onnx_rec.path, onnx_rec.files) / SUBJECT, key, out, inputs, command="mnist-pipeline",
                             public_key_name="mnist-signing.pub",
                             onnx_artifact={"name": onnx_rec.name, "digest": onnx_rec.digest})
        now = time.perf_counter()
        seconds = now - t0  # the whole stage but its commit: inputs checked, W&B run started, signed
        info = AttestationInfo.from_metadata(index)
        stage.summary = {"public_key_fingerprint": info.public_key_fingerprint, "sign_seconds": seconds,
                         "signing_seconds": now - t1,
                         "attestation_bytes": sum(p.stat().st_size for p in out.iterdir() if p.name != SUBJECT)}
        stage.log({"sign_seconds": seconds})
        stage.produce(ATTESTATION_NAME, "attestation", out, info.to_metadata())
    ref = stage.outputs["attestation"]
    logger.info("signed %s (sha256 %s) with key %s in %.2f s: %s", onnx_model.label, inputs.subject_sha256[:16],
                info.public_key_fingerprint[:16], seconds, ref.path)
    return ref
