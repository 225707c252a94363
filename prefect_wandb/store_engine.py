"""The lineage store's connections: one SQLAlchemy engine per store location per process, its write transactions,
and what differs between databases.

SQLite (the default, a file): connections are made exactly as the hand-written store made them (`creator`:
sqlite3 in autocommit, `isolation_level=None`, so every transaction is the store's own explicit BEGIN; a 30 s busy
timeout; foreign keys on; rows by name), one per transaction and closed after it (`NullPool`: no connection
outlives its use, none crosses a fork or a thread, a file deleted and made again is opened afresh). A write
transaction is `BEGIN IMMEDIATE`: the file's write lock taken up front, so two writers queue instead of failing
half-way with 'database is locked', and a read-decide-write (the promotion gate, gc's check-then-delete) is
serialised by the database.

Another database (PostgreSQL, the next step) gets its engine from its URL; what it must add is marked here:
its write lock (`_WRITE_LOCKS`: a transaction-scoped advisory lock, `pg_advisory_xact_lock`, the equivalent of
BEGIN IMMEDIATE; until then a write on it raises NotImplementedError) and its tie-breaking order
(`insertion_order`). `upsert` already picks its dialect's INSERT ... ON CONFLICT.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Engine, Table, create_engine, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_S = 30
_MAX_ENGINES = 32  # engines hold no connection (NullPool): the oldest is dropped beyond this many locations
_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()


def _sqlite_connect(target: str, *, uri: bool) -> sqlite3.Connection:
    con = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys=ON")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    return con


def engine_for(location: str | Path, *, sqlite_uri: str | None = None) -> Engine:
    """The engine of the store at `location`: a database URL, or the path of an SQLite file (`sqlite_uri`: the
    `file:` URI to open that file with instead, a read-only command's `mode=ro`, `store_file.readonly_uri`). One per
    resolved location (and URI) in this process."""
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
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[key] = engine
            while len(_engines) > _MAX_ENGINES:
                _engines.popitem(last=False)[1].dispose()
        _engines.move_to_end(key)
        return engine


def is_locked(e: BaseException | None) -> bool:
    """The database answered that another connection holds the lock (SQLite: 'database is locked')."""
    return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)


def driver_connection(conn: Connection) -> Any:
    """The driver's own connection under `conn` (on SQLite an `sqlite3.Connection`, rows by name), in the same
    transaction: for SQL written for the driver (`holds.py`, `rejections.py`, the journal's replay)."""
    return conn.connection.driver_connection


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


# how each dialect begins a transaction that every other writer waits for (the whole store's write lock)
_WRITE_LOCKS: dict[str, Callable[[Connection], None]] = {"sqlite": _begin_immediate}


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
