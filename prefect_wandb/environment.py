"""Where and with what a stage ran: the code (git commit, dirty tree), package versions, Python and platform, and
which process ran it (so a later stage on the same host can tell that a run's process died mid-step).

No Prefect, no wandb: these facts go into each run's record in the lineage store and its W&B config.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("mnist-lineage-pipeline", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript",
            "wandb", "prefect", "pydantic")
SOURCE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state() -> dict:
    """The git commit of the code that ran and whether its tree had uncommitted changes (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty, "source_dir": str(SOURCE_DIR)}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_environment(seed: int, flow_run_id: str | None) -> dict:
    return {**code_state(), "packages": package_versions(), "python": sys.version.split()[0],
            "platform": platform.platform(), "seed": seed, "flow_run_id": flow_run_id}


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def process_identity() -> dict:
    """Who runs a stage, kept in the store so a later run can tell that this one's process died."""
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": stat[1] if stat else None}


def process_gone(proc: dict) -> bool:
    """True only when sure: same host, and the pid is gone, a zombie, or now another process."""
    pid = proc.get("pid")
    if os.name != "posix" or not isinstance(pid, int) or proc.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, someone else's
    stat = _proc_stat(pid)
    if stat is None:
        return False
    return stat[0] == "Z" or (proc.get("start") is not None and stat[1] != proc["start"])
