"""Where and with what a stage ran: the code (git commit, dirty tree), package versions, Python and platform, and
which process ran it (so a later stage on the same host can tell that a run's process died mid-step).

No Prefect, no wandb: these facts go into each run's record in the lineage store and its W&B config.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state(root: Path | None = None) -> dict:
    """The git commit of the code at `root` (default: the working directory) and whether its tree had uncommitted
    changes (None outside git)."""
    root = Path(root or Path.cwd()).resolve()
    commit = _git(root, "rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty, "source_dir": str(root)}


# What is installed is read once per process: each lookup scans the installed distributions' metadata (about 0.1 s
# a stage for ten packages, 0.3 s for the module -> distribution map), and a process's imported code does not change
# when a package is reinstalled under it.
@functools.cache
def _providers() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def imported_distributions() -> tuple[str, ...]:
    """The distributions that provide a module this process has imported (the standard library has none)."""
    providers = _providers()
    names = {d for top in {m.partition(".")[0] for m in list(sys.modules)} for d in providers.get(top, ())}
    return tuple(sorted(names, key=str.lower))


def package_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """The installed version of each distribution of `names` (default: `imported_distributions()`); None when one
    is not installed."""
    return {name: _version(name) for name in (imported_distributions() if names is None else names)}


def run_environment(flow_run_id: str | None, *, code_root: Path | None = None,
                    packages: Iterable[str] | None = None, seed: int | None = None) -> dict:
    """What a run records of where it ran: the code's git state, package versions, Python, platform, the seed."""
    return {**code_state(code_root), "packages": package_versions(packages), "python": sys.version.split()[0],
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
    """True only when sure: on this host, the pid is gone, a zombie, or now another process; on another host
    (whose /proc is not ours), its lease (`proc["lease_expires_at"]`, which a live process keeps renewing) has
    expired. Without a lease (a record from before leases), another host's process is never taken for dead."""
    pid = proc.get("pid")
    if proc.get("host") != socket.gethostname():
        lease = proc.get("lease_expires_at")
        return isinstance(lease, str) and lease < datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    if os.name != "posix" or not isinstance(pid, int):
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
