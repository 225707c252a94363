"""Where a flow run's W&B records went, in one line: online (the run group's URL), or offline and why (the mode
asked for, no API key, a failed W&B call), with the `sync` command that uploads what W&B is missing."""

from __future__ import annotations

from prefect_wandb.queries import WandbWhereabouts, where_records_went
from prefect_wandb.settings import LineageSettings
from prefect_wandb.store import LineageStore


def wandb_records(settings: LineageSettings, flow_run_id: str | None, logger=None) -> WandbWhereabouts:
    """Where the W&B records of flow run `flow_run_id` went (`queries.where_records_went`), said in one line on
    `logger` (a warning when something waits for `sync`)."""
    from prefect_wandb.wandb.credentials import resolve_credentials
    from prefect_wandb.wandb.stage_run import recent_failure

    reason = None
    mode = settings.wandb.mode
    if mode == "offline":
        reason = "wandb mode offline was asked for"
    elif mode == "auto" and not (creds := resolve_credentials(settings.wandb.dir)).online:
        reason = creds.why()
    elif (failure := recent_failure()) is not None:
        reason = f"W&B failed: {failure[:200]}"
    out = where_records_went(LineageStore(settings.store), flow_run_id, offline_reason=reason,
                             command=settings.command)
    if logger is not None:
        (logger.warning if out.needs_sync else logger.info)(out.line)
    return out
