"""Opening a lineage store (`store.LineageStore`): an SQLite file, created and brought to the newest schema unless
read-only, or a PostgreSQL database, reached and then migrated; and the one line a database that went away mid-use
becomes. Every failure is a StoreError naming the store (a URL with its password masked), in one line."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, inspect

from prefect_wandb.locations import StoreURL
from prefect_wandb.schema import UnknownRevision, ensure_schema
from prefect_wandb.storage import StorageError
from prefect_wandb.store_engine import (
    STORE_TIMEOUT_ENV,
    TimeoutSettingError,
    driver_errors,
    engine_for,
    first_line,
    store_timeout,
)
from prefect_wandb.store_file import disk_full, readonly_problem, readonly_uri, sidecars_created

STORE_TABLES = {"runs", "artifacts", "artifact_files", "edges"}


class StoreError(RuntimeError):
    """The lineage store cannot be used: missing, empty, not a lineage store of ours, or (PostgreSQL) not reachable.
    Names the store (a URL with its password masked), in one line."""


def open_file(path: Path, readonly: bool) -> Engine:
    """The engine of the SQLite file at `path`. Read-only: opened with SQLite's `mode=ro` (`immutable` on read-only
    media or a full disk: `store_file.readonly_uri`), nothing created, written or migrated, and a missing, empty or
    foreign file is a StoreError; else the file (and its folder) is created and its schema brought to head."""
    if readonly:
        uri = readonly_uri(path)  # decided once: immutable on read-only media
        problem = readonly_problem(path, uri)
        if problem:
            raise StoreError(f"{path}: {problem}")
        return engine_for(path, sqlite_uri=uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = engine_for(path)
    try:
        with sidecars_created(path, lambda e: disk_full(e, path)):
            ensure_schema(engine)
    except UnknownRevision as e:
        raise StoreError(f"{path}: {e}") from None
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):
            raise
        if disk_full(e, path):
            raise StorageError(errno.ENOSPC, path) from None
        raise StoreError(f"{path}: not a readable lineage store ({e})") from None
    return engine


def open_database(url: StoreURL, shown: str, readonly: bool) -> tuple[Engine, float]:
    """The engine of a store in a database server and the timeout it was made with (for messages): reach it (one
    line when it cannot be reached), then, unless read-only, bring its schema to head (two processes at once: one
    upgrades, the other waits for the write lock and finds it current); read-only, it must already be a lineage
    store. `shown`: the URL with its password masked."""
    try:
        timeout = store_timeout()
        engine = engine_for(url)
    except TimeoutSettingError as e:
        raise StoreError(f"{shown}: {e}") from None
    try:
        with driver_errors():
            if readonly:
                with engine.connect() as conn:
                    tables = set(inspect(conn).get_table_names())
                if not tables >= STORE_TABLES:
                    raise StoreError(f"{shown}: no lineage store in this database (no runs/artifacts tables)")
            else:
                ensure_schema(engine)
    except UnknownRevision as e:
        raise StoreError(f"{shown}: {e}") from None
    except StoreError:
        raise
    except Exception as e:
        if type(e).__module__.startswith("psycopg"):
            raise StoreError(f"{shown}: cannot open the lineage store ({first_line(e)})") from None
        raise
    return engine, timeout


def unreachable(shown: str, timeout: float, e: BaseException) -> StoreError | None:
    """A database that went away mid-use (PostgreSQL stopped or restarted, the network gone), or a bound of
    `timeout` seconds met: one line naming the store; None for anything else."""
    import psycopg

    bound = f"${STORE_TIMEOUT_ENV} sets the bound, {timeout:g} s"
    if isinstance(e, psycopg.errors.LockNotAvailable):  # lock_timeout: the write lock held by another too long
        return StoreError(f"{shown}: another writer held the lineage store's write lock too long "
                          f"({first_line(e)}; {bound})")
    if isinstance(e, psycopg.errors.QueryCanceled):  # statement_timeout, or a cancel from outside
        return StoreError(f"{shown}: the lineage store's database did not finish in time ({first_line(e)}; {bound})")
    if isinstance(e, psycopg.OperationalError):  # connection lost or refused, server shut down, starting or frozen
        # (no answer within the bound: store_engine's watchdog)
        return StoreError(f"{shown}: the lineage store's database cannot be reached ({first_line(e)})")
    return None
