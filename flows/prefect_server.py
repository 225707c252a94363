"""The Prefect server behind `mnist-pipeline run` when none is configured: started early, reused, then let go.

Without PREFECT_API_URL, Prefect starts a temporary server inside `flow()` (importing the whole server app into
the client first), waits for it, and stops it at exit: on two cores that was about 7 s of a 20 s cold run, and
most of a 13 s unchanged rerun. Here the CLI instead:

1. reuses a server that an earlier run on this machine left up (same PREFECT_HOME and Prefect settings), after a
   health check: no start, no stop;
2. otherwise starts one *before* importing torch, wandb and onnx, so the server boots on the second core while
   this process imports; it is the server Prefect would have started (`create_app(ephemeral=True)`, the same
   database under PREFECT_HOME, loopback only, no UI), run by this module so that it can stop itself;
3. registers the run as a lease (a file named after its pid). The server exits `keep_s` seconds after its last
   lease ended (default 300 s; 0, or the CI environment variable set: at the end of this very run, as Prefect's
   temporary server does). A lease of a process that died does not count, so nothing lingers after a crash.

If anything about the kept server fails (a port taken, a start that does not become healthy), the run falls
back to Prefect's own temporary server with a warning: the README's one command works on a fresh machine either
way. `MNIST_PIPELINE_PREFECT_SERVER=temporary` always uses Prefect's own behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mnist_pipeline.prefect_server")

KEEP_ENV = "MNIST_PIPELINE_PREFECT_KEEP_S"  # seconds a server outlives its last run
MODE_ENV = "MNIST_PIPELINE_PREFECT_SERVER"  # "kept" (default) or "temporary" (Prefect's own)
DEFAULT_KEEP_S = 300.0
HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
START_TIMEOUT_S = 90.0


def default_keep_s() -> float:
    if os.environ.get(KEEP_ENV):
        return float(os.environ[KEEP_ENV])
    return 0.0 if os.environ.get("CI") else DEFAULT_KEEP_S


def prefect_home(environ: Mapping[str, str] | None = None) -> Path:
    # Prefect's own default, without importing Prefect (that import is what we overlap with the start).
    env = os.environ if environ is None else environ
    return Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """One kept server per PREFECT_HOME and set of PREFECT_* settings (a server started with other settings,
    another database say, is not shared). `environ`: another process's environment (default: this one's)."""
    env = os.environ if environ is None else environ
    settings = sorted((k, v) for k, v in env.items() if k.startswith("PREFECT_") and k != "PREFECT_API_URL")
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    return prefect_home(env) / "mnist-pipeline-server" / key


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:  # a zombie (our own child that exited) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class ServerLease:
    """This run's hold on a kept server: `url` to use, `ready()` to wait for it, `release()` at the end."""

    url: str
    pid: int
    state: Path
    started_here: bool
    proc: subprocess.Popen | None = None

    @property
    def lease(self) -> Path:
        return self.state / "leases" / str(os.getpid())

    def ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.pid):
                return False
            if _healthy(self.url):
                return True
            time.sleep(0.1)
        return False

    def release(self) -> None:
        """End this run's lease; a server with keep_s 0 and no other lease is stopped now (and waited for)."""
        self.lease.unlink(missing_ok=True)
        with _locked(self.state):  # no run can take a lease on it between the check and the stop
            info = _read_state(self.state)
            if info and info.get("pid") == self.pid and info.get("keep_s", 0) <= 0 and not _live_leases(self.state):
                stop(self.state)

    def abandon(self) -> None:
        """The server did not come up: stop it if we started it, and forget it."""
        self.lease.unlink(missing_ok=True)
        if self.started_here:
            stop(self.state)


def _configured_elsewhere() -> str | None:
    """Why a kept server must not be used, judged without importing Prefect: a server is configured (in the
    environment or the active profile), the ephemeral server is disabled, or our mode is 'temporary'."""
    if os.environ.get("PREFECT_API_URL"):
        return "PREFECT_API_URL is set"
    if "prefect.settings" in sys.modules:  # Prefect already loaded (a test harness, an embedding program): ask it
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return "Prefect's settings name a server"
    if os.environ.get(MODE_ENV, "kept") == "temporary":
        return f"{MODE_ENV}=temporary"
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").lower() in ("0", "false", "no"):
        return "PREFECT_SERVER_EPHEMERAL_ENABLED is false"
    import tomllib

    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
    try:
        doc = tomllib.loads(profiles.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or doc.get("active", "ephemeral")
    if doc.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"):
        return f"profile {active!r} sets PREFECT_API_URL"
    return None


def start_early() -> ServerLease | None:
    """Before the heavy imports: a lease on the kept server (started now if needed), or None when another server
    is configured or the kept one cannot be started (Prefect's own temporary server is used then)."""
    if _configured_elsewhere():
        return None
    try:
        return acquire()
    except OSError as e:
        log.warning("could not start a local Prefect server (%s); Prefect will start its temporary one", e)
        return None


@contextlib.contextmanager
def use(lease: ServerLease | None, prefetch: tuple[str, ...] = ()):
    """After the imports: make this process's Prefect talk to the lease's server for the block, and release the
    lease after it. While the server is still starting, the modules in `prefetch` are imported ("module:function"
    also calls the function), as long as the server is not ready: the run needs them soon, and the wait is free.
    Yields the API URL in use, or None for Prefect's own choice."""
    if lease is None:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    try:
        if PREFECT_API_URL.value():  # configured where we do not look before importing Prefect (.env, toml)
            lease.abandon()
            yield None
            return
        for name in prefetch:
            if _healthy(lease.url, timeout=0.2):
                log.debug("server healthy before prefetching %s", name)
                break
            log.debug("prefetch %s", name)
            module, _, func = name.partition(":")  # "module" is imported; "module:function" is also called
            with contextlib.suppress(Exception):  # a head start only: whatever fails here fails again where needed
                imported = importlib.import_module(module)
                if func:
                    getattr(imported, func)()
        t0 = time.monotonic()
        if not lease.ready():
            log.warning("the local Prefect server on %s did not start (see %s); Prefect will start its temporary "
                        "one", lease.url, lease.state / "server.log")
            lease.abandon()
            yield None
            return
        keep = (_read_state(lease.state) or {}).get("keep_s", 0)
        log.info("Prefect server %s (%s%s)", lease.url, "started for this run" if lease.started_here else "reused",
                 f"; stays up {keep:.0f} s after the last run, {KEEP_ENV}=0 stops it at the end" if keep > 0 else "")
        log.debug("waited %.2f s for the server after the imports", time.monotonic() - t0)
        os.environ["PREFECT_API_URL"] = lease.url  # for any subprocess of the run
        updates: dict = {PREFECT_API_URL: lease.url}
        if not any(os.environ.get(k) for k in HEARTBEAT_ENV):
            # Flow-run heartbeats feed zombie-run automations on a server people watch; this private server has no
            # UI and no automations, and Prefect's heartbeat thread sleeps in 1 s steps, so every flow's end
            # waited 0-1 s to join it. Set PREFECT_FLOWS_HEARTBEAT_FREQUENCY to have them anyway.
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        try:
            with temporary_settings(updates=updates):
                yield lease.url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        lease.release()


def _read_state(d: Path) -> dict | None:
    try:
        return json.loads((d / "server.json").read_text())
    except (OSError, ValueError):
        return None


def _live_leases(d: Path) -> list[int]:
    out = []
    for f in (d / "leases").glob("*") if (d / "leases").is_dir() else []:
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _alive(pid):
            out.append(pid)
        else:
            f.unlink(missing_ok=True)  # a run that died holds nothing
    return out


def acquire(keep_s: float | None = None) -> ServerLease:
    """A server for this run: the kept one if it is healthy, else a new one (returned at once, not yet ready:
    call `ready()` after the imports it overlaps with)."""
    keep_s = default_keep_s() if keep_s is None else keep_s
    d = state_dir()
    with _locked(d):
        (d / "leases").mkdir(exist_ok=True)
        (d / "leases" / str(os.getpid())).touch()  # held before the lock is let go: the server cannot leave now
        info = _read_state(d)
        if info and _alive(info["pid"]):
            if _healthy(info["url"], timeout=2) or info.get("starting_until", 0) > time.time():
                return ServerLease(info["url"], info["pid"], d, started_here=False)
            stop(d)  # alive but not answering long after its start: replaced, not left behind
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        with open(d / "server.log", "ab") as logf:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", __name__, "--port", str(port), "--state-dir", str(d),
                                     "--keep-s", str(keep_s)], env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        tmp = d / f"server.json.{os.getpid()}"
        tmp.write_text(json.dumps({"pid": proc.pid, "url": url, "keep_s": keep_s, "started_by": os.getpid(),
                                   "starting_until": time.time() + START_TIMEOUT_S}))
        tmp.replace(d / "server.json")
        return ServerLease(url, proc.pid, d, started_here=True, proc=proc)


def stop(d: Path | None = None, timeout: float = 20) -> bool:
    """Stop the kept server of `d` (default: this environment's) and wait for it; True if one was running."""
    d = d or state_dir()
    info = _read_state(d)
    (d / "server.json").unlink(missing_ok=True)
    if not info or not _alive(info["pid"]):
        return False
    try:
        os.killpg(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _alive(info["pid"]) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info["pid"], os.WNOHANG)  # reap it when it is our own child
        time.sleep(0.05)
    if _alive(info["pid"]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info["pid"], signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(info["pid"], 0)
    return True


# ------------------------------------------------------------------------------------------ the server process


def _serve(port: int, d: Path, keep_s: float) -> int:
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))

    def retire() -> None:
        info = _read_state(d)
        if info and info.get("pid") == os.getpid():
            (d / "server.json").unlink(missing_ok=True)

    def watchdog() -> None:
        # Leave `keep_s` after the last live lease ended, checked every half second. The decision is taken under
        # the lock that `acquire` takes: a run either got its lease before (and we stay) or finds no server.
        idle_since = None
        while not server.should_exit:
            time.sleep(0.5)
            if _live_leases(d):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= keep_s:
                with _locked(d):
                    if not _live_leases(d):
                        retire()
                        server.should_exit = True
                        return
                idle_since = None

    def warm() -> None:
        # A Prefect server answers its first API request (not /health) about 0.5 s late, setting itself up; pay
        # that here, while the run that started this server is still importing, not on its first call.
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/admin/version", timeout=30).read()

    threading.Thread(target=watchdog, daemon=True, name="lease-watchdog").start()
    threading.Thread(target=warm, daemon=True, name="warm-up").start()
    try:
        server.run()
    finally:
        retire()  # without the lock: `stop` may hold it while it waits for us
    return 0 if server.started else 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="a Prefect server that exits after its last lease (internal)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--keep-s", type=float, default=DEFAULT_KEEP_S)
    a = p.parse_args(argv)
    return _serve(a.port, a.state_dir, a.keep_s)


if __name__ == "__main__":
    sys.exit(main())
