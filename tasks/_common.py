from __future__ import annotations

from prefect.runtime import flow_run

from mnist_pipeline.recipes import write_json  # noqa: F401  (one writer for every stage: equal dicts, equal bytes)


def current_flow_run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None
