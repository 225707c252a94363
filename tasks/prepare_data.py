from __future__ import annotations

import urllib.error

from prefect import get_run_logger, task

from mnist_pipeline import data, idx, mirrors
from mnist_pipeline.changes import source_key
from mnist_pipeline.config import DATASET_NAME, PipelineConfig
from mnist_pipeline.results import DatasetInfo
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRef, storage, write_json


def cache_key(context, parameters) -> str:
    """Same data settings, same source files (path, size, mtime), same stores: the same dataset artifact."""
    return source_key(parameters["cfg"])


def network_error_only(task, task_run, state) -> bool:
    """Retry a failed download, not a corrupt file, a wrong md5 or a full disk: those fail the same way again."""
    try:
        state.result()
    except (idx.DataError, storage.StorageError):
        return False
    except (mirrors.DownloadError, urllib.error.URLError):
        return True
    except OSError as e:
        return not storage.is_storage_error(e)
    except Exception:
        return False
    return False


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
        location = d.local_dir if d.source == "local" else idx.raw_folder(root)
        meta = {**record, **data.provenance(prepared, location, d.mirrors), "prepared_from": source_key(cfg)}
        stage.summary = {"train_size": len(prepared.train), "test_size": len(prepared.test)}
        stage.produce(DATASET_NAME, "dataset", out, DatasetInfo.from_metadata(meta).to_metadata())
    ref = stage.outputs["dataset"]
    logger.info("dataset %s: %d train / %d test images, digest %s", ref.label, len(prepared.train),
                len(prepared.test), ref.digest[:16])
    return ref
