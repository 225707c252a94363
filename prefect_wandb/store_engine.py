"""The lineage store's connections: one SQLAlchemy engine per store location per process, its write transactions,
and what differs between databases.

SQLite (the default, a file): connections are made exactly as the hand-written store made them (`creator`:
sqlite3 in autocommit, `isolation_level=None`, so every transaction is the store's own explicit BEGIN; a 30 s busy
timeout; foreign keys on; rows by name), one per transaction and closed after it (`NullPool`: no connection
outlives its use, none crosses a fork or a thread, a file deleted and made again is opened afresh). A write
transaction is `BEGIN IMMEDIATE`: the file's write lock taken up front, so two writers queue instead of failing
half-way with 'database is locked', and a read-decide-write (the promotion gate, gc's check-then-delete) is
serialised by the database.

PostgreSQL (a `postgresql+psycopg://` URL, `locations.py`): one engine per URL per process with a small pool whose
connections are tested before use (`pool_pre_ping`: a server restarted since is reconnected to, not failed on),
bounded waits (below), and no connection shared with a forked child (the pools are forgotten in the child). Its write lock is a transaction-scoped
advisory lock, `pg_advisory_xact_lock(WRITE_LOCK_KEY)`, taken by the first statement of every write transaction:
the equivalent of BEGIN IMMEDIATE, one writer at a time per database, released by COMMIT or ROLLBACK (also when
the client dies: the server ends its transaction). Chosen over SERIALIZABLE (which would need every writer to retry
on serialization failures) and over row locks (a gate's read of "no production yet" has no row to lock): under
READ COMMITTED each statement after the lock sees every commit made before it, so a read-decide-write (the
promotion gate, gc's check-then-delete, the schema's upgrade) is serialised exactly as on SQLite; readers take
no lock. `upsert` picks its dialect's INSERT ... ON CONFLICT; new ids come back through RETURNING.

PostgreSQL never makes a store call wait without bound (issue 29), each bound derived from one setting, T =
$PREFECT_WANDB_STORE_TIMEOUT (seconds, default 60, read when a process first opens a URL):
- the connect: libpq's `connect_timeout` (min(10, T) s, at least 2) for a server that is down, unreachable, or
  frozen (its kernel completes the TCP handshake, nobody answers the login);
- the server's own bounds (`options=-c ...`, before any of the URL's own `options`, which win): `lock_timeout` T
  (the write lock's wait: another writer's normal transaction takes milliseconds, a queue of them seconds, gc's
  removal of a folder inside its transaction longer; a writer that holds the lock past T is the failure),
  `statement_timeout` T + g (g = max(1 s, T/4): any statement; past the lock's bound, so that a wait for the lock
  fails as one), and `idle_in_transaction_session_timeout` 10 T (a client frozen or cut off while it holds the
  write lock loses it then, instead of blocking every writer for ever);
- a server that stops answering altogether (stopped with SIGSTOP, a VM paused, a half-open connection: its kernel
  still acknowledges every packet, so neither the server's timeouts nor TCP keepalives fire): every wait for the
  server's answer on a connection (a statement, a COMMIT, the pool's ping) is cut after T + 2 g by a watchdog
  thread (past the statement timeout: a live server answers the statement it cancelled), which shuts the connection's socket down; the waiting call then raises
  `psycopg.OperationalError("no answer from the database server within N s ...")` and the connection is dropped.
  TCP keepalives and `tcp_user_timeout` still notice a host that vanished.
The store turns each into one line naming the store (`LineageStore._unreachable`).
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    Table,
    create_engine,
    event,
    literal_column,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from prefect_wandb.locations import StoreURL, redact

BUSY_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long a connection attempt may take at most (libpq's connect_timeout)
# libpq's settings for every PostgreSQL connection: a bounded connect (`pg_connect_args`), and a server that vanishes
# mid-query (a host gone, a network cut) noticed by TCP keepalives and the unacknowledged-data timeout in about half
# a minute, not after the kernel's hours: a store call then fails in one line instead of hanging
PG_CONNECT_ARGS = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
                   "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000,
                   "application_name": "prefect-wandb lineage store"}
STORE_TIMEOUT_ENV = "PREFECT_WANDB_STORE_TIMEOUT"
# the name of a Prefect Secret block holding the password of a store URL that has none, where libpq has none either
# (no PGPASSWORD; ~/.pgpass is libpq's own and comes after)
PASSWORD_BLOCK_ENV = "PREFECT_WANDB_STORE_PASSWORD_BLOCK"
STORE_TIMEOUT_S = 60.0  # T: PostgreSQL's lock timeout (the write lock's wait); the other bounds follow from it
IDLE_IN_TRANSACTION_FACTOR = 10  # idle_in_transaction_session_timeout = 10 T
# the PostgreSQL write lock's key (pg_advisory_xact_lock's bigint; advisory locks are per database): "lineage"
WRITE_LOCK_KEY = int.from_bytes(b"lineage", "big")
_MAX_ENGINES = 32  # engines hold no connection (NullPool): the oldest is dropped beyond this many locations
_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()


def _sqlite_connect(target: str, *, uri: bool) -> sqlite3.Connection:
    con = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys=ON")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    return con


def _forget_pools_in_child() -> None:
    """In a forked child: the parent's pooled PostgreSQL connections are left to the parent (never used, never
    closed here); the child opens its own, and has a watchdog of its own (`_Watchdog`) once it waits on one."""
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _watchdog.forget()


class TimeoutSettingError(ValueError):
    """$PREFECT_WANDB_STORE_TIMEOUT is not a positive number of seconds."""


def store_timeout() -> float:
    """T, the PostgreSQL store's bound in seconds: $PREFECT_WANDB_STORE_TIMEOUT, else `STORE_TIMEOUT_S`."""
    raw = os.environ.get(STORE_TIMEOUT_ENV, "").strip()
    if not raw:
        return STORE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise TimeoutSettingError(f"${STORE_TIMEOUT_ENV}={raw!r}: give a positive number of seconds (default "
                                  f"{STORE_TIMEOUT_S:g})")
    return value


def _grace(timeout: float) -> float:
    return max(1.0, timeout / 4)


def answer_within(timeout: float) -> float:
    """How long a PostgreSQL connection waits for any answer of the server before the watchdog cuts it: T + 2 g,
    past the server's statement timeout T + g (a live server answers a statement it cancelled)."""
    return timeout + 2 * _grace(timeout)


def pg_connect_args(timeout: float) -> dict:
    """libpq's parameters for a PostgreSQL store with bound `timeout` (T): `PG_CONNECT_ARGS` with the connect
    timeout (libpq takes whole seconds, at least 2) and the server's lock, statement and idle-in-transaction
    timeouts (`options`, in milliseconds)."""
    ms = max(1, round(timeout * 1000))
    options = (f"-c lock_timeout={ms} -c statement_timeout={round((timeout + _grace(timeout)) * 1000)} "
               f"-c idle_in_transaction_session_timeout={ms * IDLE_IN_TRANSACTION_FACTOR}")
    return {**PG_CONNECT_ARGS, "connect_timeout": max(2, min(CONNECT_TIMEOUT_S, math.ceil(timeout))),
            "options": options}


class _Watchdog:
    """One daemon thread per process that cuts the PostgreSQL connections whose wait for the server has run past
    its deadline: it shuts the connection's socket down, so that the waiting thread's select returns and libpq
    reads the end of the connection. Waits are armed and disarmed by `_bounded_connection_class().wait`; the thread
    starts at the first armed wait and sleeps while none is."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: dict[int, tuple[float, object]] = {}  # id(connection) -> (deadline, connection)
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """In a forked child: the parent's thread is not here, nor are its waits."""
        self._cond = threading.Condition()
        self._deadlines = {}
        self._thread = None

    def arm(self, conn, seconds: float) -> None:
        with self._cond:
            self._deadlines[id(conn)] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lineage-store-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self, conn) -> None:
        with self._cond:
            self._deadlines.pop(id(conn), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._deadlines:
                    self._cond.wait()
                    continue
                at = time.monotonic()
                late = [c for deadline, c in self._deadlines.values() if deadline <= at]
                for c in late:
                    del self._deadlines[id(c)]
                    _cut(c)
                if self._deadlines:
                    self._cond.wait(min(d for d, _ in self._deadlines.values()) - time.monotonic())


def _cut(conn) -> None:
    """Shut down a frozen connection's socket (a duplicate of its descriptor: shutdown acts on the socket, which
    the waiting thread's select then sees end). It is marked, and closed by the thread that waited on it."""
    conn.cut_after = conn.answer_within
    with suppress(Exception):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


_watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


_bounded_class = None


def _bounded_connection_class() -> type:
    """psycopg's Connection, each of whose waits for the server is watched (`_Watchdog`): made on first use, so that
    SQLite-only use never imports psycopg."""
    global _bounded_class
    if _bounded_class is None:
        import psycopg

        class BoundedConnection(psycopg.Connection):
            answer_within: float | None = None
            cut_after: float | None = None

            # private psycopg API: Connection.wait(gen, ...) is the one method through which every wait of a
            # connection for its server passes (execute, fetch, commit, rollback); psycopg has no client-side
            # bound on it (a server's statement_timeout cannot fire in a frozen server). Arguments are passed on
            # as given (3.2 and 3.3 differ). tests/test_postgres_faults.py fails when it stops being called.
            def wait(self, gen, *args, **kwargs):
                bound = self.answer_within
                if bound is None:
                    return super().wait(gen, *args, **kwargs)
                _watchdog.arm(self, bound)
                try:
                    return super().wait(gen, *args, **kwargs)
                except psycopg.OperationalError:
                    if self.cut_after is None:
                        raise
                    raise psycopg.OperationalError(
                        f"no answer from the database server within {self.cut_after:g} s (frozen, overloaded or "
                        f"cut off; ${STORE_TIMEOUT_ENV} sets the bound)") from None
                finally:
                    _watchdog.disarm(self)
                    if self.cut_after is not None:
                        with suppress(Exception):
                            self.close()

        _bounded_class = BoundedConnection
    return _bounded_class


def _block_password(name: str) -> str:
    """The store's password from the Prefect Secret block `name` (read at each new connection: a rotated secret is
    used from the next one); a block that cannot be read is the connection's failure, in one line."""
    import psycopg

    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name, _sync=True).get()  # type: ignore[call-arg,union-attr]  # sync in a loop too
    except Exception as e:  # no such block, no Prefect server: the store cannot be opened, said as such
        raise psycopg.OperationalError(f"no password: the Prefect Secret block {name!r} (${PASSWORD_BLOCK_ENV}) "
                                       f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                                       ) from None
    return str(value)


def _postgresql_engine(url, timeout: float) -> Engine:
    """A PostgreSQL engine whose connections are `_bounded_connection_class()`'s, with `pg_connect_args(timeout)`;
    a URL's own `options` come after ours (the last `-c` of a setting wins)."""
    engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=8, pool_recycle=3600,
                           hide_parameters=True, connect_args=pg_connect_args(timeout))
    cls = _bounded_connection_class()
    ours = pg_connect_args(timeout)["options"]
    bound = answer_within(timeout)

    @event.listens_for(engine, "do_connect")
    def connect(dialect, conn_rec, cargs, cparams):
        theirs = url.query.get("options")
        cparams["options"] = f"{ours} {theirs}" if isinstance(theirs, str) and theirs else ours
        if url.password is None and not os.environ.get("PGPASSWORD") and os.environ.get(PASSWORD_BLOCK_ENV):
            cparams["password"] = _block_password(os.environ[PASSWORD_BLOCK_ENV])
        conn = cls.connect(*cargs, **cparams)
        conn.answer_within = bound
        return conn

    return engine


def engine_for(location: str | Path | StoreURL, *, sqlite_uri: str | None = None) -> Engine:
    """The engine of the store at `location`: a database URL, or the path of an SQLite file (`sqlite_uri`: the
    `file:` URI to open that file with instead, a read-only command's `mode=ro`, `store_file.readonly_uri`). One per
    resolved location (and URI) in this process."""
    if isinstance(location, StoreURL):
        location = location.secret()
    if isinstance(location, Path) or "://" not in location:
        url = make_url(f"sqlite:///{Path(location).resolve()}")
    else:
        url = make_url(location)
    timeout = store_timeout() if url.get_backend_name() != "sqlite" else None  # part of the key: an engine keeps the bounds it was made with
    key = f"{url.render_as_string(hide_password=False)}#{sqlite_uri or ''}#{timeout}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if timeout is None:
                target = sqlite_uri or url.database or ""
                engine = create_engine(url, poolclass=NullPool,
                                       creator=lambda: _sqlite_connect(target, uri=sqlite_uri is not None))
            else:  # PostgreSQL: a few pooled connections per process, checked before use, every wait bounded
                engine = _postgresql_engine(url, timeout)
            _engines[key] = engine
            while len(_engines) > _MAX_ENGINES:
                _engines.popitem(last=False)[1].dispose()
        _engines.move_to_end(key)
        return engine


def is_locked(e: BaseException | None) -> bool:
    """The database answered that another connection holds the lock (SQLite: 'database is locked')."""
    return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)


@contextmanager
def driver_errors() -> Iterator[None]:
    """The driver's own exception (`sqlite3.IntegrityError`, `sqlite3.OperationalError: database is locked`, ...)
    instead of SQLAlchemy's wrapper of it: the store raised those before SQLAlchemy, and callers catch them."""
    try:
        yield
    except DBAPIError as e:
        if isinstance(e.orig, Exception):
            raise e.orig from None
        raise


def _begin_immediate(conn: Connection) -> None:
    for attempt in range(50):
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # on a full disk: where SQLite cannot make its -wal/-shm
            return
        except DBAPIError as e:
            if not is_locked(e.orig) or attempt == 49:
                raise
            conn.rollback()  # SQLAlchemy's view of the connection: nothing began
            time.sleep(0.1)


def _advisory_lock(conn: Connection) -> None:
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")  # begins the transaction, then waits


# how each dialect begins a transaction that every other writer waits for (the whole store's write lock)
_WRITE_LOCKS: dict[str, Callable[[Connection], None]] = {"sqlite": _begin_immediate, "postgresql": _advisory_lock}


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction holding the store's write lock from its first statement, committed when the block
    ends, rolled back when it raises."""
    lock = _WRITE_LOCKS.get(engine.dialect.name)
    if lock is None:
        raise NotImplementedError(f"the lineage store has no write lock for {engine.dialect.name} yet")
    with engine.connect() as conn:
        lock(conn)
        try:
            yield conn
            conn.commit()
        except BaseException:
            with suppress(DBAPIError, sqlite3.Error):  # SQLite has already rolled back after some errors (full disk)
                conn.rollback()
            raise


def upsert(conn: Connection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """`INSERT` with the dialect's `ON CONFLICT` clauses (`on_conflict_do_nothing`, `on_conflict_do_update`),
    which SQLite and PostgreSQL spell alike."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insertion_order(conn: Connection, table: Table) -> list[ColumnElement | Column]:
    """ORDER BY terms that break a tie of the caller's own (rows recorded in the same millisecond): on SQLite the
    rowid, the order they were inserted in; elsewhere the primary key, a stable order but not that one (where it
    matters there, a revision gives the table a sequence column)."""
    if conn.dialect.name == "sqlite":
        return [literal_column("rowid")]
    return list(table.primary_key.columns)


def new_id(result: CursorResult) -> int:
    """The id the database gave the row an INSERT made (SQLite: its rowid; PostgreSQL: RETURNING)."""
    return int((result.inserted_primary_key or (0,))[0])


def first_line(e: BaseException) -> str:
    """An error's first line, any password in it masked."""
    return redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
