"""What the flow adds to its own run: a Prefect artifact listing what was produced and the W&B runs
(`publish_flow_artifact`), and where the W&B records went, in one line (`wandb_records`)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.report import markdown
from mnist_pipeline.results import RunSummary
from mnist_pipeline.tasks._common import current_flow_run_id
from prefect_wandb import LineageStore
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
               "inputs": ", ".join(u.label for u in edges["used"]),
               "W&B run": run.wandb_url or f"{run.run_id} ({run.wandb_mode}: {run.wandb_dir})"}
        for art in edges["produced"]:
            rows.append({**row, "output": f"{art.label} ({art.type})", "sha256": art.digest[:16],
                         "path": art.path})
        if not edges["produced"]:
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
                         u.label for u in store.edges(art.producer_run_id)["used"]),
                     "W&B run": (run.wandb_url or f"{run.run_id} ({run.wandb_mode}: {run.wandb_dir})") if run else "",
                     "output": f"{art.label} ({art.type})", "sha256": art.digest[:16], "path": art.path})
    return rows


def wandb_records(cfg: PipelineConfig, logger=None) -> dict:
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
