from __future__ import annotations

import json
from pathlib import Path

from prefect.runtime import flow_run

from mnist_pipeline import storage


def current_flow_run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None


def write_json(path: Path, data: dict) -> None:
    storage.write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def unless_permanent(task, task_run, state) -> bool:
    """Prefect retry condition: retry a crash mid-step (a retry resumes from the checkpoint), not a full or
    read-only disk, which would fail the same way again."""
    try:
        state.result()
    except storage.StorageError:
        return False
    except OSError as e:
        return not storage.is_storage_error(e)
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True
