from __future__ import annotations

from contextlib import AbstractContextManager

from prefect.runtime import flow_run

from mnist_pipeline.config import PipelineConfig
from prefect_wandb import Stage, open_stage, storage


def current_flow_run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


def pipeline_stage(cfg: PipelineConfig, job_type: str, **kw) -> AbstractContextManager[Stage]:
    """`prefect_wandb.open_stage` for this pipeline: its lineage settings, its config on record (W&B gets the
    tutorial-shaped view), its seed."""
    return open_stage(cfg.lineage(), job_type, config=cfg, wandb_config=cfg.flat(), seed=cfg.train.seed, **kw)


def unless_permanent(task, task_run, state) -> bool:
    """Prefect retry condition: retry a crash mid-step (a retry resumes from the checkpoint), not a full or
    read-only disk, nor a diverged training (seeded: it diverges again), which would fail the same way again."""
    try:
        state.result()
    except storage.StorageError:
        return False
    except OSError as e:
        return not storage.is_storage_error(e)
    except Exception as e:  # noqa: BLE001 - anything else may be transient
        return type(e).__name__ != "TrainingDiverged"  # by name: importing training imports torch
    return True
