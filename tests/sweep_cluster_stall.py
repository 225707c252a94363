"""Preloaded into one worker of test_sweep_cluster's cluster (`dask worker --preload tests/sweep_cluster_stall.py`):
the first checkpoint that worker writes is its last act. The checkpoint is written whole (file, record, rename) as
always, then the file `stalled` in the worker's working directory names it, and the writer never returns, so the
training waits on it for good (a machine hung mid-training) until the test kills the worker with SIGKILL. The test
so kills the worker mid-trial, its checkpoint on disk, every time, whatever the machine's load."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mnist_pipeline import training

MARKER = "stalled"
# Dask imports a preload file more than once: wrap the real writer, never a wrapper of it
_real_write = getattr(training._write_checkpoint, "real", training._write_checkpoint)


def _write_then_stall(path: Path, state: dict, lineage) -> None:
    _real_write(path, state, lineage)
    tmp = Path(f"{MARKER}.tmp")
    tmp.write_text(str(path))
    os.replace(tmp, MARKER)  # whole, or not there
    threading.Event().wait()  # forever: the worker is killed


_write_then_stall.real = _real_write  # type: ignore[attr-defined]
training._write_checkpoint = _write_then_stall
