"""Can Dask run a sweep? A scheduler at the address given (`wait_for_scheduler`), workers that see and write the
artifacts and W&B folders at the same paths as the flow's process (`check_workers`), and how many torch threads
every trial of a sweep gets (`core_shares`, `trial_threads`).

Takes a `distributed.Client` as it is; `distributed` is imported only to reach a scheduler. No Prefect, no W&B."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from mnist_pipeline.checkpoint_files import sidecar
from mnist_pipeline.sweep import usable_cores

WORKERS_TIMEOUT_S = 60.0


class WorkerCheckFailed(RuntimeError):
    """The Dask workers cannot run this sweep (they do not share the artifacts folder, or cannot import it)."""


def _look(folders: list[str], token: str) -> dict:
    """Run on every worker: which host it is, whether it sees the probe file, whether it can write there."""
    seen, writable = {}, {}
    for folder in folders:
        probe = Path(folder) / ".sweep-probe" / token
        try:
            seen[folder] = probe.read_text() == token
        except OSError:
            seen[folder] = False
        try:
            mine = probe.with_name(f"{token}-{os.getpid()}-{socket.gethostname()}")
            mine.write_text(token)
            mine.unlink()
            writable[folder] = True
        except OSError:
            writable[folder] = False
    return {"host": socket.gethostname(), "pid": os.getpid(), "cpus": usable_cores(), "seen": seen,
            "writable": writable}


def check_workers(client, folders: list[Path], min_workers: int = 1) -> dict:
    """Fail fast, with one line, unless every worker sees and can write `folders` at the same paths as we do."""
    try:
        client.wait_for_workers(min_workers, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        have = len(client.scheduler_info().get("workers", {}))
        raise WorkerCheckFailed(f"{have} Dask worker(s) at {client.scheduler.address} after "
                                f"{WORKERS_TIMEOUT_S:.0f} s, {min_workers} needed") from None
    token = uuid.uuid4().hex
    probes = []
    for folder in folders:
        probe = folder / ".sweep-probe" / token
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
        probes.append(probe)
    try:
        try:
            found = client.run(_look, [str(f) for f in folders], token)
        except Exception as e:
            raise WorkerCheckFailed(f"the Dask workers cannot run the pipeline's code ({type(e).__name__}: {e}); "
                                    "install mnist-lineage-pipeline on them, or put it on their PYTHONPATH") from None
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)
    for address, info in sorted(found.items()):
        for folder in folders:
            if not info["seen"][str(folder)]:
                raise WorkerCheckFailed(f"Dask worker {address} on {info['host']} does not see {folder} (it must be "
                                        "a folder shared by every worker, at the same path)")
            if not info["writable"][str(folder)]:
                raise WorkerCheckFailed(f"Dask worker {address} on {info['host']} cannot write to {folder}")
    return found


def core_shares(found: dict, nthreads: dict) -> dict[str, int]:
    """Torch threads per worker address: its host's cores divided by the task slots (Dask threads) of all the
    workers on that host, at least 1. Two 1-thread workers on a 2-core machine get 1 each; one gets 2."""
    slots: dict[str, int] = {}
    for addr, info in found.items():
        slots[info["host"]] = slots.get(info["host"], 0) + int(nthreads.get(addr, 1))
    return {addr: max(1, info["cpus"] // slots[info["host"]]) for addr, info in found.items()}


def trial_threads(shares: dict[str, int], asked: int = 0) -> int:
    """The torch threads of every trial of a sweep: `asked` (train.threads) when set, else the smallest share of
    the workers there at the start. A trial's settings belong to the trial, not to the worker that happens to run
    it: a trial rerun on another worker (a lost one's, or one that joined later) trains with the same count, and
    makes the model `reproduce` makes from its record."""
    return asked if asked > 0 else min(shares.values(), default=1)


def checkpoint_writer(checkpoint: Path) -> str | None:
    """The run that wrote `checkpoint`, from its sidecar record (None: no checkpoint, or no readable record)."""
    import json

    try:
        record = json.loads(sidecar(checkpoint).read_text())
    except (OSError, ValueError):
        return None
    lineage = record.get("lineage") if isinstance(record, dict) else None
    run_id = lineage.get("run_id") if isinstance(lineage, dict) else None
    return run_id if isinstance(run_id, str) else None


def wait_for_scheduler(address: str, timeout: float = 10.0) -> None:
    """One line instead of a hang when --dask-address names no scheduler."""
    from distributed import Client

    start = time.monotonic()
    try:
        Client(address, timeout=timeout).close()
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"no Dask scheduler at {address} within {time.monotonic() - start:.0f} s "
                              f"({type(e).__name__})") from None
