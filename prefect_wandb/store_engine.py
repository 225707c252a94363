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
a bounded connect (`connect_timeout`: an unreachable server is an error after seconds, never a hang; TCP
keepalives and `tcp_user_timeout` for a server that vanishes mid-query), and no
connection shared with a forked child (the pools are forgotten in the child). Its write lock is a transaction-scoped
advisory lock, `pg_advisory_xact_lock(WRITE_LOCK_KEY)`, taken by the first statement of every write transaction:
the equivalent of BEGIN IMMEDIATE, one writer at a time per database, released by COMMIT or ROLLBACK (also when
the client dies: the server ends its transaction). Chosen over SERIALIZABLE (which would need every writer to retry
on serialization failures) and over row locks (a gate's read of "no production yet" has no row to lock): under
READ COMMITTED each statement after the lock sees every commit made before it, so a read-decide-write (the
promotion gate, gc's check-then-delete, the schema's upgrade) is serialised exactly as on SQLite; readers take
no lock. `upsert` picks its dialect's INSERT ... ON CONFLICT; new ids come back through RETURNING.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Column, ColumnElement, Connection, CursorResult, Engine, Table, create_engine, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from prefect_wandb.locations import StoreURL, redact

BUSY_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long a connection attempt may take (libpq's connect_timeout)
# libpq's settings for every PostgreSQL connection: a bounded connect, and a server that vanishes mid-query (a host
# gone, a network cut) noticed by TCP keepalives and the unacknowledged-data timeout in about half a minute, not
# after the kernel's hours: a store call then fails in one line instead of hanging
PG_CONNECT_ARGS = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
                   "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000,
                   "application_name": "prefect-wandb lineage store"}
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
    closed here); the child opens its own."""
    for engine in list(_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


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
    key = f"{url.render_as_string(hide_password=False)}#{sqlite_uri or ''}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if url.get_backend_name() == "sqlite":
                target = sqlite_uri or url.database or ""
                engine = create_engine(url, poolclass=NullPool,
                                       creator=lambda: _sqlite_connect(target, uri=sqlite_uri is not None))
            else:  # PostgreSQL: a few pooled connections per process, checked before use
                engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=8, pool_recycle=3600,
                                       hide_parameters=True, connect_args=PG_CONNECT_ARGS)
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
