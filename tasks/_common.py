from __future__ import annotations

import json
from pathlib import Path

from prefect.runtime import flow_run


def current_flow_run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
