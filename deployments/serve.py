"""The two deployments of the pipeline flow, served from one process (`mnist-pipeline serve`).

- scheduled-retraining: a cron schedule (weekly by default); retrains only when the data or the training
  config changed since the production model.
- manual: no schedule; the Prefect UI's "Run" button shows the typed PipelineConfig as a form (descriptions,
  defaults, bounds) and enforces it, so a bad value is refused before the run is even created.
Work-pool users deploy the same two with `prefect deploy --prefect-file deployments/prefect.yaml --all`.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron

from mnist_pipeline.config import SCHEDULE_CRON as DEFAULT_CRON
from mnist_pipeline.config import SCHEDULE_TIMEZONE as DEFAULT_TIMEZONE
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

SCHEDULED, MANUAL = "scheduled-retraining", "manual"


def build_deployments(cfg: PipelineConfig, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE,
                      paused: bool = False) -> list:
    params = {"config": cfg.model_dump(mode="json")}
    common: dict[str, Any] = dict(parameters=params, enforce_parameter_schema=True, tags=["mnist", "lineage"])
    return [
        mnist_lineage_pipeline.to_deployment(
            name=SCHEDULED, schedules=[Cron(cron, timezone=timezone)], paused=paused,
            description=f"Scheduled retraining ({cron}, {timezone}): prepares the data, retrains only if the "
                        "dataset digest or training config differ from the production model's, then validates "
                        "and promotes.", **common),
        mnist_lineage_pipeline.to_deployment(
            name=MANUAL, description="Run the pipeline by hand from the UI form; set 'force' to retrain even "
                                     "when nothing changed.", **common),
    ]


def serve_deployments(cfg: PipelineConfig, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE,
                      limit: int | None = 1) -> None:
    """Register both deployments and run their flow runs from this process until interrupted.

    `limit=1`: one flow run at a time on this machine (training uses every core); a second waits."""
    serve(*build_deployments(cfg, cron, timezone), limit=limit)
