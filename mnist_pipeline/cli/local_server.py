"""A real Prefect server on loopback, started as `prefect server start` in a subprocess.

`run` starts one for itself where no Prefect API is configured (`mnist_pipeline.cli.main`); the benchmark and the
deployment tests use `local_prefect_server` (SQLite under a temporary PREFECT_HOME, a free port on 127.0.0.1, torn
down on exit).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal a process started with start_new_session=True and its children; SIGKILL them after `timeout`."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Run as `python -c WITH_PARENT PARENT_PID PROGRAM ARGS...` (Linux): asks the kernel for SIGTERM when the parent
# ends, even by kill -9 (prctl PR_SET_PDEATHSIG, kept across exec), then becomes PROGRAM. Done in a process of its
# own rather than in a `preexec_fn`, which is not safe where the parent has threads.
WITH_PARENT = """import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):  # the parent ended before the request: end too
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


class PrefectServer:
    """`prefect server start` (Prefect's own command: its API on 127.0.0.1, no UI), in a process session of its own
    (a Ctrl-C or SIGTERM sent to the caller's process group does not reach it), started at once and waited for by
    `ready()`, so the caller goes on with its own work while it starts. `with_parent`: it ends when the process that
    started it ends, however that ends (Linux). Its output goes to `log` (or nowhere)."""

    def __init__(self, home: Path, port: int | None = None, log: Path | None = None, ui: bool = False,
                 with_parent: bool = False):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = log
        env = {**os.environ, "PREFECT_HOME": str(home),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": self.url,
               "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.port),
               "PREFECT_UI_ENABLED": str(ui).lower()}
        self._out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the server writes it until stopped
        prefect = Path(sys.executable).with_name("prefect")
        argv = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off",
                "--ui" if ui else "--no-ui"]
        if with_parent and sys.platform == "linux":
            argv = [sys.executable, "-c", WITH_PARENT, str(os.getpid()), *argv]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout: float = 120) -> str:
        """The API URL once the server answers its health check; RuntimeError (the server's last line of output,
        where there is a log) when it exits first or does not answer within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`prefect server start` exited with {self.proc.returncode} before it was ready"
                                   + self._last_line())
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                if r.status == 200:
                    return self.url
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on {self.url} did not answer within {timeout:.0f} s"
                                   + self._last_line())
            time.sleep(0.1)

    def _last_line(self) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        return f" ({lines[-1].strip()})" if lines else ""

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to its session, SIGKILL after `timeout` seconds; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                stop_group(self.proc, timeout=timeout)
        if not isinstance(self._out, int):
            self._out.close()


@contextmanager
def local_prefect_server(home: Path | None = None, port: int | None = None, timeout: float = 120,
                         log: Path | None = None, ui: bool = False) -> Iterator[str]:
    """Yield the API URL of a fresh server; its environment for clients is PREFECT_API_URL=<url>."""
    own_home = home is None
    home = Path(home or tempfile.mkdtemp(prefix="prefect-home-"))
    server = PrefectServer(home, port, log, ui)
    try:
        yield server.ready(timeout)
    finally:
        server.stop()
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


def no_prefect_api() -> bool:
    """Whether no Prefect API is configured (PREFECT_API_URL, in the environment or the active profile): then
    `run` and `sweep` start a server for themselves, and `serve` refuses."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


class ServerNotReady(RuntimeError):
    """The Prefect server started for this run did not come up."""


def server_for_this_run() -> PrefectServer:
    """No Prefect API is configured: a Prefect server for this run alone (`prefect server start`, API only, on a
    free loopback port, on PREFECT_HOME's database), started now so that it comes up while the run imports and
    checks what it needs (Prefect's own temporary server would start only at the flow call). It stops at exit after
    Prefect's own exit hooks, which send the flow run's last logs and events to it (registered later, they run
    first), as Prefect's temporary server does; and with the process however it ends (kill -9: `with_parent`)."""
    from prefect.settings import PREFECT_HOME

    fd, name = tempfile.mkstemp(prefix="mnist-pipeline-prefect-server-", suffix=".log")
    os.close(fd)  # the server's process writes it (`PrefectServer` opens it for that)
    log = Path(name)
    atexit.register(log.unlink, missing_ok=True)
    server = PrefectServer(Path(PREFECT_HOME.value()), log=log, with_parent=True)
    atexit.register(server.stop)
    return server


@contextmanager
def api_of(server: PrefectServer | None, meanwhile: Callable[[], None] | None = None) -> Iterator[None]:
    """The flow's Prefect API: the configured one, or `server` once it answers (`meanwhile()` is called first: what
    the run would do later anyway, done while the server starts).

    On the run's own server the flow run sends no heartbeats: they let a server that outlives a run find it crashed,
    and this one ends with the run (Prefect would otherwise join its heartbeat thread, which sleeps in 1 s steps,
    at the flow's end: up to 1 s of every run)."""
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    print(f"mnist-pipeline: no Prefect API is configured: a Prefect server for this run on {server.url} (stopped "
          "when the run ends; `prefect server start --background` keeps one for the UI and later runs)",
          file=sys.stderr)
    if meanwhile is not None:
        meanwhile()
    try:
        url = server.ready(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
    except RuntimeError as e:
        raise ServerNotReady(f"the Prefect server for this run did not start: {e}") from None
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
