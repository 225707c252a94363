"""What the flow adds to its own run: a Prefect artifact listing what was produced and the W&B runs
(`publish_flow_artifact`), and where the W&B records went, in one line (`wandb_records`)."""

from __future__ import annotations

import logging

from prefect.artifacts import create_markdown_artifact

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.report import markdown
from mnist_pipeline.results import RunSummary
from mnist_pipeline.tasks._common import current_flow_run_id
from prefect_wandb import LineageStore, WandbWhereabouts, local_folder
from prefect_wandb import wandb_records as library_wandb_records


def lineage_rows(cfg: PipelineConfig, flow_run_id: str | None, summary: RunSummary | None = None) -> list[dict]:
    """One row per output artifact of this flow run's stages, and one per stage run without an output (promote:
    its decision), with the run that made it."""
    store = LineageStore(cfg.lineage_db)
    promotion = summary.promotion if summary is not None else None
    rows = []
    for run in store.runs(flow_run_id):
        edges = store.edges(run.run_id)
        row = {"stage": run.job_type, "status": run.status,
               "inputs": ", ".join(u.label for u in edges.used),
               "W&B run": run.wandb_url or f"{run.run_id} ({run.wandb_mode}: {run.wandb_dir})"}
        for art in edges.produced:
            rows.append({**row, "output": f"{art.label} ({art.type})", "sha256": art.digest[:16],
                         "path": art.path})
        if not edges.produced:
            out = (f"decision: {promotion.decision}" if run.job_type == "promote" and promotion
                   else run.error or "no artifact")
            rows.append({**row, "output": out, "sha256": "", "path": ""})
    if not rows and summary is not None and summary.status == "skipped":
        rows = _reused_rows(store, summary)
    return rows


def _reused_rows(store: LineageStore, summary: RunSummary) -> list[dict]:
    """A skipped run made nothing (its prepare-data was a cache hit, training was skipped): the table shows what
    it relied on instead, the dataset and the production model, each with the earlier run that made it."""
    from mnist_pipeline.tasks.train import MODEL_NAME

    recs = [store.find_artifact(loc.ref.split(":")[0], loc.digest) for loc in summary.artifacts.values()]
    recs.append(store.alias(MODEL_NAME, "production"))
    rows = []
    for art in (r for r in recs if r is not None):
        run = store.run(art.producer_run_id)
        rows.append({"stage": f"{run.job_type if run else '?'} (earlier run, reused)",
                     "status": run.status if run else "", "inputs": ", ".join(
                         u.label for u in store.edges(art.producer_run_id).used),
                     "W&B run": (run.wandb_url or f"{run.run_id} ({run.wandb_mode}: {run.wandb_dir})") if run else "",
                     "output": f"{art.label} ({art.type})", "sha256": art.digest[:16], "path": art.path})
    return rows


def wandb_records(cfg: PipelineConfig, logger=None) -> WandbWhereabouts:
    """Where this flow run's W&B records went (`prefect_wandb.wandb_records`), said in one line on `logger`."""
    return library_wandb_records(cfg.lineage(), current_flow_run_id(), logger)


def publish_flow_artifact(cfg: PipelineConfig, summary: RunSummary) -> str:
    """A Prefect artifact on the flow run: what was produced, its digests, the W&B runs, where the report is.

    A plain function called by the flow, not a task: it only reports, and a task run would cost an unchanged
    (skipped) run a tenth of its time."""
    rows = lineage_rows(cfg, current_flow_run_id(), summary)
    text = markdown.lineage_markdown(summary, rows, str(cfg.lineage_db))  # a URL masked
    create_markdown_artifact(markdown=text, key="mnist-lineage", description="Artifacts and lineage of this run")
    return text


PRODUCTION_KEY = "production-model"  # one key for every run: its versions in the Prefect UI are the promotion history


def production_facts(cfg: PipelineConfig, decision) -> markdown.ProductionModel:
    """Which model is production now, since when, made by which run and flow run, its figures, its run report and
    (online) its W&B run and artifact, from the lineage store; and what this run's gate decided (`decision`: a
    `PromotionRecord`)."""
    from mnist_pipeline.tasks.report import REPORT_FILE
    from mnist_pipeline.tasks.train import MODEL_NAME
    from prefect_wandb import evaluations

    store = LineageStore(cfg.lineage_db)
    policy = cfg.gate()
    decided = store.artifact(decision.artifact_id)
    this = markdown.Decision(model=decided.label, decision=decision.decision, reason=decision.reason,
                             flow_run_id=decision.flow_run_id, at=decision.decided_at)
    prod = store.alias(MODEL_NAME, policy.production_alias)
    if prod is None:
        return markdown.ProductionModel(model=None, lineage_db=str(cfg.lineage_db), decision=this)
    since = next((a.set_at for a in store.aliases_of(prod.artifact_id) if a.alias == policy.production_alias),
                 None)
    made_it = [p for p in store.promotions(prod.artifact_id) if policy.production_alias in p.aliases]
    how = made_it[-1] if made_it else None
    trained = store.run(prod.producer_run_id)
    evals = (evaluations(store, prod.artifact_id, how.test_set) if how and how.test_set else []) \
        or evaluations(store, prod.artifact_id)
    metrics = evals[-1] if evals else None
    report = None
    for m in reversed(evals):
        reports = [a for run_id in store.consumers(m.artifact_id) if (r := store.run(run_id)) is not None
                   and r.job_type == "report" and r.status == "finished" for a in store.edges(run_id).produced]
        if reports:
            report = str(local_folder(reports[-1].path, reports[-1].files) / REPORT_FILE)
            break
    wandb_run = trained.wandb_url if trained is not None and trained.wandb_mode == "online" else None
    wandb_artifact = (f"{wandb_run.split('/runs/')[0]}/artifacts/{prod.type}/{prod.name}/sha256-{prod.digest[:16]}"
                      if wandb_run and "/runs/" in wandb_run else None)
    figures = {k: v for k, v in (metrics.metadata if metrics else {}).items()
               if k in ("test_accuracy", "test_loss", "test_count")}
    ds = next(iter(metrics.inputs("dataset")), None) if metrics else None
    return markdown.ProductionModel(
        model=prod.label, digest=prod.digest, path=prod.path, since=since,
        made_production_by=(("rollback" + (f" requested by {how.requested_by}" if how.requested_by else "")
                             if how.kind == "rollback" else "the promotion gate") if how else None),
        made_production_in=how.flow_run_id if how else None, why=how.reason if how else None,
        trained_by_run=trained.run_id if trained else None, trained_in_flow_run=trained.flow_run_id if trained else None,
        metrics=metrics.label if metrics else None, test_set=f"{ds['name']}:v{ds['version']}" if ds else None,
        figures=figures, report=report, wandb_run=wandb_run, wandb_artifact=wandb_artifact,
        lineage_db=str(cfg.lineage_db), decision=this)


def publish_production_artifact(cfg: PipelineConfig, decision, logger=None) -> str | None:
    """A new version of the `production-model` Markdown artifact (after every gate decision, promoted or not): the
    production model as the lineage store has it now, and this run's decision. It is a view of the store, which
    holds the decision: failing to write it fails nothing (a warning on `logger`, and None)."""
    try:
        text = markdown.production_markdown(production_facts(cfg, decision))
        create_markdown_artifact(markdown=text, key=PRODUCTION_KEY,
                                 description="Which model is in production, since when, made by which run")
    except Exception as e:
        (logger or logging.getLogger(__name__)).warning("could not update the %s artifact: %s: %s", PRODUCTION_KEY,
                                                        type(e).__name__, e)
        return None
    return text


def outcome_message(model_label: str, decision) -> str:
    """The final state's message of a run that reached the gate: what it decided about the model, and why."""
    if decision.decision == "promoted":
        return f"promoted: {model_label} is production ({decision.reason})"
    return f"kept as candidate: {model_label} ({decision.reason})"
