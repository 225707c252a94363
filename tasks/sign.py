"""sign: the validated ONNX file's model-signing bundle and its DSSE-signed SLSA Provenance v1 Statement, as one
`attestation` artifact (a copy of the ONNX file beside them, so `mnist-pipeline verify` finds them in that folder;
see `prefect_wandb.provenance.verify` for where else it looks). The private key is read, never copied: only its
public fingerprint goes into the artifact, the store and W&B."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run

from mnist_pipeline import __version__
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import AttestationInfo, DatasetInfo, TrainingResult, ValidationResult
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRecord, ArtifactRef, Stage
from prefect_wandb.provenance import attest
from prefect_wandb.provenance.statement import Resource

ATTESTATION_NAME = "convnet-onnx-attestation"
SUBJECT = "model.onnx"
BUILD_TYPE = "https://mnist-lineage-pipeline.dev/build/onnx-export/v1"  # what this pipeline's signed build is


def _builder_id() -> str:
    name = deployment.name
    if name:
        return f"urn:mnist-lineage-pipeline:prefect-deployment:{flow_run.flow_name}/{name}"
    return "urn:mnist-lineage-pipeline:cli"


def _flow_started() -> datetime | None:
    """When the flow run started (None outside one: then the training run's start is the build's)."""
    ctx = FlowRunContext.get()
    start = getattr(getattr(ctx, "flow_run", None), "start_time", None) if ctx else None
    return start if isinstance(start, datetime) else None


def provenance(cfg: PipelineConfig, stage: Stage, onnx_rec: ArtifactRecord, model_rec: ArtifactRecord,
               dataset_rec: ArtifactRecord, validation_rec: ArtifactRecord) -> attest.Attestation:
    """What the sign stage signs: the library's `Attestation.of` these records, with what this pipeline adds (its
    build type, version and builder, the raw MNIST files, the training's threads and device, the dataset's source
    and the validation's figures)."""
    train_run = stage.store.run(model_rec.producer_run_id)
    training = TrainingResult.from_metadata(train_run.summary if train_run else None)
    d = DatasetInfo.from_metadata(dataset_rec.metadata)
    raw = [Resource(name=f["name"], digest={"sha256": f["sha256"]},
                    annotations={"size": f.get("size"), "md5": f.get("md5")}) for f in d.raw_files or []]
    return attest.Attestation.of(
        stage, onnx_rec, model_rec, dataset_rec, validation_rec, scheme="mnist-lineage",
        code="mnist-lineage-pipeline", code_uri=f"pkg:pypi/mnist-lineage-pipeline@{__version__}",
        builder_id=_builder_id(), builder_version={"mnist-lineage-pipeline": __version__}, build_type=BUILD_TYPE,
        model_file="model.pt", subject=SUBJECT, started_on=_flow_started(), raw_files=raw,
        internal_parameters={"seed": cfg.train.seed, "threads": training.threads, "device": training.device},
        dataset_annotations={"source": d.source, "slice": d.slice, "sizes": d.sizes,
                             "files": {f.relpath: f.sha256 for f in dataset_rec.files}},
        validation_annotations=ValidationResult.from_metadata(validation_rec.metadata).figures())


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
        signing = provenance(cfg, stage, *(stage.record(r) for r in (onnx_model, model, dataset, validation)))
        out = stage.staging(ATTESTATION_NAME)
        t1 = time.perf_counter()
        index = signing.write(key, out, command="mnist-pipeline", public_key_name="mnist-signing.pub")
        now = time.perf_counter()
        seconds = now - t0  # the whole stage but its commit: inputs checked, W&B run started, signed
        info = AttestationInfo.from_metadata(index)
        stage.summary = {"public_key_fingerprint": info.public_key_fingerprint, "sign_seconds": seconds,
                         "signing_seconds": now - t1,
                         "attestation_bytes": sum(p.stat().st_size for p in out.iterdir() if p.name != SUBJECT)}
        stage.log({"sign_seconds": seconds})
        stage.produce(ATTESTATION_NAME, "attestation", out, info.to_metadata())
    ref = stage.outputs["attestation"]
    logger.info("signed %s (sha256 %s) with key %s in %.2f s: %s", onnx_model.label,
                signing.inputs.subject_sha256[:16], info.public_key_fingerprint[:16], seconds, ref.path)
    return ref
