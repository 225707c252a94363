from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.store import LineageStore
from tasks._common import current_flow_run_id


def lineage_rows(cfg: PipelineConfig, flow_run_id: str | None) -> list[dict]:
    """One row per output artifact of this flow run's stages, with the run that made it."""
    store = LineageStore(cfg.lineage_db)
    rows = []
    for run in store.runs(flow_run_id):
        edges = store.edges(run.run_id)
        for art in edges["produced"]:
            rows.append({"stage": run.job_type, "artifact": f"{art.name}:v{art.version}", "type": art.type,
                         "sha256": art.digest, "inputs": ", ".join(f"{u.name}:v{u.version}" for u in edges["used"]),
                         "wandb_run": run.wandb_url or f"{run.run_id} ({run.wandb_mode}: {run.wandb_dir})",
                         "path": art.path})
    return rows


def publish_report(cfg: PipelineConfig, summary: dict) -> str:
    """A Prefect artifact on the flow run: what was produced, its digests and the W&B runs.

    A plain function called by the flow, not a task: it only reports, and a task run would cost an unchanged
    (skipped) run a tenth of its time."""
    flow_run_id = current_flow_run_id()
    rows = lineage_rows(cfg, flow_run_id)
    lines = [f"# MNIST lineage pipeline: {summary.get('status', 'completed')}", ""]
    if summary.get("reason"):
        lines += [summary["reason"], ""]
    if summary.get("promotion"):
        p = summary["promotion"]
        lines += [f"- **promotion**: {p['decision']} ({p['reason']})"]
    for key in ("test_accuracy", "onnx_max_abs_diff", "onnx_argmax_agreement", "onnx_latency_ms_p50"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
    lines += ["", "| stage | artifact | type | sha256 | inputs | W&B run |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['artifact']} | {r['type']} | `{r['sha256'][:16]}` | {r['inputs']} |"
              f" {r['wandb_run']} |" for r in rows]
    lines += ["", f"Lineage store: `{cfg.lineage_db}`"]
    markdown = "\n".join(lines)
    create_markdown_artifact(markdown=markdown, key="mnist-lineage", description="Artifacts and lineage of this run")
    return markdown
