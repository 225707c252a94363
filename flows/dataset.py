"""The dataset both flows start from: prepared (or taken from Prefect's cache), and prepared again from the source
when the cached one cannot be used as stored (no longer recorded, deleted by gc, or its files changed).

From the moment the flow has it, the flow holds it in the lineage store (`prefect_wandb.hold_artifact`), so gc leaves it alone
although no stage of the flow has declared it yet (a cache hit); `release_holds` (the flows' end hooks) lets go."""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline.changes import stored_problem
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.tasks._common import current_flow_run_id
from mnist_pipeline.tasks.prepare_data import for_config
from prefect_wandb import ArtifactDeleted, ArtifactRef, LineageStore, StoreURL, hold_artifact
from prefect_wandb import release_holds as release_flow_holds

# flow run id -> the lineage store its holds are in (the hooks get the flow run, not the effective config)
_HELD: dict[str, Path | StoreURL] = {}


def _hold(cfg: PipelineConfig, dataset: ArtifactRef) -> str | None:
    """Hold `dataset` for this flow run; why it cannot be used (gc deleted it a moment ago), else None."""
    flow_run_id = current_flow_run_id()
    store = LineageStore(cfg.lineage_db)
    rec = store.find_artifact(dataset.name, dataset.digest)
    if flow_run_id is None or rec is None:
        return None
    _HELD[flow_run_id] = cfg.lineage_db  # a URL with its password (str() would mask it)
    try:
        hold_artifact(store, flow_run_id, rec.artifact_id)
    except ArtifactDeleted:
        return "gc deleted its files"
    return None


def ensure_dataset(cfg: PipelineConfig, logger) -> ArtifactRef:
    """prepare-data with `cfg.data`'s retries and time limit; the dataset it returns is held for the flow run and
    verified against its record here, since the skip rule and training vouch for it."""
    prepare = for_config(cfg)
    dataset = prepare(cfg)
    problem = _hold(cfg, dataset) or stored_problem(LineageStore(cfg.lineage_db), dataset)
    if problem:
        logger.warning("dataset %s: %s; preparing it again from the source", dataset.label, problem)
        dataset = prepare.with_options(refresh_cache=True)(cfg)
        _hold(cfg, dataset)
    return dataset


def release_holds(flow, flow_run, state) -> None:
    """Prefect state hook of both flows (completed, failed, crashed, cancelled): the flow run's holds end with it
    (a flow run killed before its hook runs is expired by gc: its process is gone).

    The hook may run in another process than the flow run's: a run cancelled from the UI is killed by the runner
    (`mnist-pipeline serve`) or worker that started it, which then runs the flow's on_cancellation hooks itself,
    with the flow run as the API holds it. There, the store is the one of the flow run's own config: its `config`
    parameter over its deployment's defaults, as the flow run merged them (`flows/preflight.py`)."""
    db = _HELD.pop(str(flow_run.id), None) or _store_of(flow_run)
    if db is not None:
        release_flow_holds(LineageStore(db), str(flow_run.id))


def _store_of(flow_run) -> str | StoreURL | None:
    """The lineage store a flow run's config names (its parameters over its deployment's defaults); None when it
    cannot be told (then gc expires the holds: the run's process is gone)."""
    import logging

    from mnist_pipeline.flows.preflight import merge_with_defaults

    try:
        given = dict(getattr(flow_run, "parameters", None) or {}).get("config")
        defaults = None
        if getattr(flow_run, "deployment_id", None):
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                defaults = dict(client.read_deployment(flow_run.deployment_id).parameters or {}).get("config")
        config = PipelineConfig.model_validate(given) if given is not None else PipelineConfig()
        config, _ = merge_with_defaults(config, defaults)
        db = config.resolved().lineage_db
    except Exception as e:  # the hook never fails the run's end: gc expires what it cannot release
        logging.getLogger(__name__).warning("flow run %s: its lineage store is unknown (%s: %s); its holds expire "
                                            "at the next gc", flow_run.id, type(e).__name__, e)
        return None
    if isinstance(db, StoreURL):  # a database (its URL without the password: libpq's PGPASSWORD completes it)
        return db
    return str(db) if Path(db).exists() else None
