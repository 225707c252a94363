"""A PostgreSQL store that stops answering never hangs a store call or a command (issue 29): a real server
(`tests/servers.py`) frozen with SIGSTOP, every process of it, as a paused VM or a hung host would be (its kernel
still completes TCP handshakes and acknowledges every packet, so neither the server's timeouts nor TCP keepalives
fire), fails each call within the bound set by $PREFECT_WANDB_STORE_TIMEOUT, in one line naming the store with its
password masked; after SIGCONT the next call works. The write lock still waits for another writer's transaction,
and one held past the bound is one line too; a writer frozen while it holds the lock loses it to the server's
idle-in-transaction timeout. (A stopped server: `test_postgres_store.py`'s restart and refused-port
tests, which fail in seconds.)"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import text

from prefect_wandb import StoreError
from prefect_wandb.cli import main as ops_main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.store import LineageStore
from prefect_wandb.store_engine import STORE_TIMEOUT_ENV, answer_within, pg_connect_args

T = 2.0  # the bound the tests set: lock_timeout 2 s, statement_timeout 3 s, the watchdog's cut at 4 s, connect 2 s
WITHIN = answer_within(T) + pg_connect_args(T)["connect_timeout"] + 3  # a cut wait, a reconnect, and slack


@pytest.fixture
def bounded(monkeypatch):
    monkeypatch.setenv(STORE_TIMEOUT_ENV, str(T))


def _server_pids(postgres) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, walwriter, ...)."""
    main = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [main]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                pids.append(int(d.name))
    return pids


@contextmanager
def frozen(postgres) -> Iterator[None]:
    """Every process of the server stopped (SIGSTOP) inside the block, continued (SIGCONT) at its end, also when
    the test fails: the server is the session's."""
    pids = _server_pids(postgres)
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _start(store, run_id):
    store.start_run(run_id, "train", config={}, env={}, flow_run_id="f1", run_group=None, wandb_mode="offline",
                    wandb_dir=None, wandb_project=None, wandb_entity=None)


def _finish(store, run_id):
    store.finish_run(run_id, used=[], produced=[], summary={}, wandb_url=None, wandb_mode="offline")


def _one_line(e: BaseException, postgres) -> str:
    msg = str(e)
    assert "\n" not in msg and postgres.password not in msg and "lineage:***@127.0.0.1" in msg, msg
    return msg


def test_a_frozen_server_fails_each_call_and_command_within_the_bound_and_the_next_call_after_works(
        bounded, postgres, postgres_db, capsys):
    store = LineageStore(postgres_db)
    _start(store, "r1")
    with frozen(postgres):
        for call in (lambda: _finish(store, "r1"),  # a stage's commit: the pooled connection's ping is cut
                     store.runs,  # a read
                     lambda: LineageStore(postgres_db)):  # a stage opening the store
            t0 = time.monotonic()
            with pytest.raises(StoreError) as e:
                call()
            assert time.monotonic() - t0 < WITHIN
            assert "lineage store" in _one_line(e.value, postgres)
        t0 = time.monotonic()
        assert ops_main(["audit", "x:v0", "--lineage-db", postgres_db]) == Exit.STORE  # a command
        assert time.monotonic() - t0 < WITHIN
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and postgres.password not in err and "lineage:***@" in err, err
    _finish(store, "r1")  # continued: the next call reconnects
    assert store.run("r1").status == "finished"


def test_a_server_freezing_mid_transaction_is_cut_by_the_watchdog_naming_the_bound(bounded, postgres, postgres_db):
    store = LineageStore(postgres_db)
    _start(store, "r1")
    t0 = time.monotonic()
    # the write lock held, the connection checked out: no ping, no reconnect
    with pytest.raises(StoreError) as e, store.transaction() as conn:
        conn.execute(text("SELECT 1"))
        with frozen(postgres):
            conn.execute(text("SELECT 2"))  # the server's kernel takes it; nobody answers
    took = time.monotonic() - t0
    msg = _one_line(e.value, postgres)
    assert answer_within(T) - 0.5 < took < answer_within(T) + 3, took
    assert f"no answer from the database server within {answer_within(T):g} s" in msg and STORE_TIMEOUT_ENV in msg
    _finish(store, "r1")  # the cut connection was dropped; the lock went with its session
    assert store.run("r1").status == "finished"


def test_the_write_lock_waits_for_another_writer_and_past_the_bound_fails_in_one_line(bounded, postgres,
                                                                                      postgres_db):
    store = LineageStore(postgres_db)
    with store.reader() as conn:  # the bounds are the session's settings
        shown = {k: conn.execute(text(f"SHOW {k}")).scalar() for k in (
            "lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")}
    assert shown == {"lock_timeout": "2s", "statement_timeout": "3s", "idle_in_transaction_session_timeout": "20s"}

    def hold(seconds: float, holding: threading.Event) -> None:
        with store.transaction():
            holding.set()
            time.sleep(seconds)

    for seconds, fails in ((1.0, False), (T + 3, True)):
        holding = threading.Event()
        holder = threading.Thread(target=hold, args=(seconds, holding))
        holder.start()
        try:
            assert holding.wait(10)
            t0 = time.monotonic()
            if fails:
                with pytest.raises(StoreError) as e:
                    _start(store, "late")
                assert "another writer held the lineage store's write lock too long" in _one_line(e.value, postgres)
                assert T - 0.5 < time.monotonic() - t0 < T + 2
            else:
                _start(store, "waited")  # queued behind the other transaction, then done
                assert time.monotonic() - t0 > seconds - 0.3
        finally:
            holder.join(30)
    assert [r.run_id for r in store.runs()] == ["waited"]


def _hold_the_lock(url: str, holding) -> None:
    os.environ[STORE_TIMEOUT_ENV] = "0.5"  # this writer's bounds: idle in transaction for 5 s at most
    with LineageStore(url).transaction() as conn:
        conn.execute(text("SELECT 1"))
        holding.set()
        time.sleep(120)


def test_a_writer_frozen_while_it_holds_the_write_lock_loses_it_and_the_others_go_on(bounded, postgres, postgres_db):
    store = LineageStore(postgres_db)
    ctx = multiprocessing.get_context("fork")
    holding = ctx.Event()
    holder = ctx.Process(target=_hold_the_lock, args=(postgres_db, holding))
    holder.start()
    try:
        assert holding.wait(30)
        t0 = time.monotonic()
        os.kill(holder.pid, signal.SIGSTOP)  # a worker frozen inside its transaction (or cut off: the same)
        with pytest.raises(StoreError, match="write lock too long"):
            _start(store, "blocked")  # meanwhile: one line after T, as with any writer holding the lock
        while True:  # the server ends the frozen writer's session after its idle-in-transaction timeout (5 s)
            try:
                _start(store, "after")
                break
            except StoreError:
                assert time.monotonic() - t0 < 15
        assert 4 < time.monotonic() - t0 < 15
    finally:
        holder.kill()
        holder.join(10)
    assert [r.run_id for r in store.runs()] == ["after"]


def test_a_bad_timeout_setting_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(STORE_TIMEOUT_ENV, "soon")
    with pytest.raises(StoreError) as e:
        LineageStore("postgresql+psycopg://u:SECRETPW@127.0.0.1:1/db")
    assert "\n" not in str(e.value) and "SECRETPW" not in str(e.value) and f"${STORE_TIMEOUT_ENV}='soon'" in str(
        e.value)
    assert pg_connect_args(60)["options"] == ("-c lock_timeout=60000 -c statement_timeout=75000 "
                                              "-c idle_in_transaction_session_timeout=600000")
    assert pg_connect_args(60)["connect_timeout"] == 10 and pg_connect_args(0.5)["connect_timeout"] == 2
    assert answer_within(60) == 90
