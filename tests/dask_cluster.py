"""A real Dask cluster for tests: `dask scheduler` and `dask worker` as separate processes on loopback.

Each process runs in its own working directory (so nothing relies on a shared cwd), in its own session (so a
worker can be killed, SIGKILL, like a lost machine), with bounded waits and cleanup that always runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port

START_TIMEOUT_S = 90.0


class DaskCluster:
    def __init__(self, root: Path, n_workers: int = 2, nthreads: int = 1, env: dict | None = None,
                 worker_args: dict[int, list[str]] | None = None):
        """`worker_args`: more `dask worker` arguments for worker i (e.g. a `--preload` file)."""
        self.root, self.n_workers, self.nthreads = Path(root), n_workers, nthreads
        self.worker_args = worker_args or {}
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it until it exits
        try:
            return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def log(self, name: str) -> str:
        f = self.root / name / f"{name}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def start(self) -> DaskCluster:
        self.scheduler = self._spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                                   "--port", str(self.port), "--no-dashboard"])
        for i in range(self.n_workers):
            self.add_worker(i)
        self.wait_for_workers(self.n_workers)
        return self

    def add_worker(self, i: int) -> subprocess.Popen:
        name = f"worker{i}"
        proc = self._spawn(name, ["distributed.cli.dask_worker", self.address, "--name", name, "--nthreads",
                                  str(self.nthreads), "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                                  "--local-directory", str(self.root / name / "dask-scratch"),
                                  *self.worker_args.get(i, [])])
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT_S) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited ({self.scheduler.returncode}): "
                                   f"{self.log('scheduler')[-2000:]}")
            try:
                with Client(self.address, timeout=5) as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    logs = " | ".join(self.log(f"worker{i}")[-500:] for i in range(len(self.workers)))
                    raise RuntimeError(f"{n} dask worker(s) not up within {timeout:.0f} s ({e}): {logs}") from e
                time.sleep(0.5)

    def kill_worker(self, i: int) -> None:
        """SIGKILL a worker's whole session: a machine lost mid-task, no goodbye to the scheduler."""
        proc = self.workers[i]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def close(self, grace: float = 1.0) -> None:
        """Stop every process this cluster started: the workers first (SIGTERM, each tells the scheduler it leaves),
        then the scheduler; a process not gone within `grace` s is SIGKILLed with its whole session. (SIGTERM to the
        workers and the scheduler at once can leave a worker hung in its own close, a 15 s wait for nothing.)"""
        for group in ([p for p in self.workers], [self.scheduler] if self.scheduler is not None else []):
            live = [p for p in group if p.poll() is None]
            for p in live:
                os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in live:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
