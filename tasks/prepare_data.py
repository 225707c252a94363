from __future__ import annotations

import hashlib
import json
import urllib.error
from pathlib import Path

from prefect import get_run_logger, task

from mnist_pipeline import __version__, data
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import DatasetInfo
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRef, DigestMismatch, LineageStore, local_folder, storage, verify_files, write_json

DATASET_NAME = "mnist"


def _source_files(cfg: PipelineConfig) -> list[Path]:
    d = cfg.data
    if d.source == "local" and d.local_dir is not None:
        return sorted(p for base in (d.local_dir, data.raw_folder(d.local_dir)) if base.is_dir()
                      for p in base.iterdir() if p.is_file())
    if d.source == "download":
        raw = data.raw_folder(d.root)
        return sorted(p for p in raw.iterdir() if p.is_file()) if raw.is_dir() else []
    return []  # synthetic data is a pure function of its settings


def cache_key(context, parameters) -> str:
    """Same data settings, same source files (path, size, mtime), same stores: the same dataset artifact."""
    cfg: PipelineConfig = parameters["cfg"]
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _source_files(cfg)]
    blob = json.dumps([__version__, cfg.data.model_dump(mode="json"), cfg.train.classes, str(cfg.artifacts_dir),
                       str(cfg.lineage_db), files], sort_keys=True)
    return "prepare-data-" + hashlib.sha256(blob.encode()).hexdigest()


def network_error_only(task, task_run, state) -> bool:
    """Retry a failed download, not a corrupt file, a wrong md5 or a full disk: those fail the same way again."""
    try:
        state.result()
    except (data.DataError, storage.StorageError):
        return False
    except (data.DownloadError, urllib.error.URLError):
        return True
    except OSError as e:
        return not storage.is_storage_error(e)
    except Exception:
        return False
    return False


def stored_problem(cfg: PipelineConfig, ref: ArtifactRef) -> str | None:
    """Why the dataset `ref` cannot be used as it is stored (not recorded, or its files changed), else None."""
    store = LineageStore(cfg.lineage_db)
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


def for_config(cfg: PipelineConfig):
    """prepare-data with the retries and the overall time limit of `cfg.data` (a last guard: every network read
    has its own timeout)."""
    d = cfg.data
    return prepare_data.with_options(retries=d.retries, retry_delay_seconds=d.retry_delay,
                                      timeout_seconds=d.task_timeout)


@task(name="prepare-data", retries=2, retry_delay_seconds=5, retry_condition_fn=network_error_only,
      cache_key_fn=cache_key, persist_result=True)
def prepare_data(cfg: PipelineConfig) -> ArtifactRef:
    logger = get_run_logger()
    d = cfg.data
    root = d.root / "local" if d.source == "local" else d.root  # never overwrite a downloaded copy
    with pipeline_stage(cfg, "prepare-data") as stage:
        logger.info("preparing MNIST from %s (slice=%d)", d.source, d.slice)
        prepared = data.prepare(d.source, root, local_dir=d.local_dir, mirrors=d.mirrors, slice_step=d.slice,
                                classes=cfg.train.classes, synthetic_sizes=(d.synthetic_train, d.synthetic_test),
                                timeout=d.timeout)
        out = stage.staging(DATASET_NAME)
        data.save_split(prepared.train, out / "train.pt")
        data.save_split(prepared.test, out / "test.pt")
        # The file is content only (its digest is the dataset's version); the metadata adds where it came from.
        record = data.dataset_record(prepared, d.slice, cfg.train.classes)
        write_json(out / "dataset.json", record)
        location = d.local_dir if d.source == "local" else data.raw_folder(root)
        meta = {**record, **data.provenance(prepared, location, d.mirrors)}
        stage.summary = {"train_size": len(prepared.train), "test_size": len(prepared.test)}
        stage.produce(DATASET_NAME, "dataset", out, DatasetInfo.from_metadata(meta).to_metadata())
    ref = stage.outputs["dataset"]
    logger.info("dataset %s: %d train / %d test images, digest %s", ref.label, len(prepared.train),
                len(prepared.test), ref.digest[:16])
    return ref
