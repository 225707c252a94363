"""A real Prefect server on loopback, started as `prefect server start` in a subprocess.

Used by the benchmark and the deployment tests (and by anyone who wants one from Python): SQLite under a
temporary PREFECT_HOME, a free port on 127.0.0.1, torn down on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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


@contextmanager
def local_prefect_server(home: Path | None = None, port: int | None = None, timeout: float = 120,
                         log: Path | None = None, ui: bool = False) -> Iterator[str]:
    """Yield the API URL of a fresh server; its environment for clients is PREFECT_API_URL=<url>."""
    own_home = home is None
    home = Path(home or tempfile.mkdtemp(prefix="prefect-home-"))
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": url, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_ENABLED": str(ui).lower()}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the server process holds it open
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--analytics-off", "--ui" if ui else "--no-ui"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server on {url} not ready after {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        stop_group(proc)
        if not isinstance(out, int):
            out.close()
        if own_home:
            shutil.rmtree(home, ignore_errors=True)
