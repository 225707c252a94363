"""How a database gets the lineage store's schema: Alembic's revisions (`prefect_wandb/migrations`), run when a
writable store opens (`ensure_schema`), also when two processes create the store at once.

A store already at `HEAD` with every table of `tables.py` is opened with two reads and without loading Alembic.
Otherwise, in one write transaction (which a second opener waits for, then finds the store current):

- no version table but the store's tables (a store written before Alembic): the hand-written code's own upgrade
  (`migrations/legacy.py`, SQLite), then stamped at `BASELINE`;
- at a revision this code does not know (a newer release's): UnknownRevision, nothing changed;
- then `alembic upgrade head` (on an empty database: the baseline creates every table);
- a table of head that is missing all the same (dropped by hand, or by a restore of part of a store) is created
  empty, as the hand-written schema's CREATE TABLE IF NOT EXISTS did on every open.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from prefect_wandb import migrations
from prefect_wandb.store_engine import driver_errors, is_locked, write_transaction
from prefect_wandb.tables import metadata

if TYPE_CHECKING:
    from alembic.config import Config


class UnknownRevision(RuntimeError):
    """The store's schema is a revision this code does not have (a newer release wrote it): left as it is."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built here (no alembic.ini): the migrations inside the package, run on
    `connection` (env.py uses it, inside its transaction)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.FOLDER))
    cfg.set_main_option("file_template", "rev%%(rev)s_%%(slug)s")  # an importable module name
    cfg.attributes["connection"] = connection
    return cfg


def _state(conn: Connection) -> tuple[str | None, set[str]]:
    """The store's revision (None: no version table) and its tables."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        return None, tables
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar(), tables


def current(conn: Connection) -> bool:
    """True when the store needs nothing: at HEAD, no table missing."""
    version, tables = _state(conn)
    return version == migrations.HEAD and set(metadata.tables) <= tables


def migrate(conn: Connection) -> None:
    """Bring the store to HEAD, inside the caller's write transaction (which commits it)."""
    version, tables = _state(conn)
    if version != migrations.HEAD:
        from alembic import command  # loaded only when there is something to do
        from alembic.script import ScriptDirectory

        cfg = alembic_config(conn)
        if version is not None and version not in {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}:
            raise UnknownRevision(f"its schema is revision {version}, which this release does not know (its newest "
                                  f"is {migrations.HEAD}): written by a newer release?")
        if version is None and "runs" in tables:  # written before Alembic
            from prefect_wandb.migrations import legacy

            legacy.to_baseline(conn)
            command.stamp(cfg, migrations.BASELINE)
        command.upgrade(cfg, "head")
        tables = set(inspect(conn).get_table_names())
    missing = [t for name, t in metadata.tables.items() if name not in tables]
    if missing:
        metadata.create_all(conn, tables=missing)


def _wal(conn: Connection) -> None:
    """Make an SQLite file a WAL database (readers never wait for the writer). Two processes creating a new store
    at once: one may have begun its switch to WAL while the file was still in rollback mode, and the other's WAL
    connections then hold the lock that switch waits for, whatever SQLite's busy handler does ('database is
    locked', at once): so the switch is tried on a short timeout, and `ensure_schema` retries on 'locked'."""
    if conn.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
        conn.exec_driver_sql("PRAGMA busy_timeout=250")
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA busy_timeout=30000")


def ensure_schema(engine: Engine, patience: float = 30.0) -> None:
    """Give the store at `engine` its schema at HEAD (SQLite: as a WAL database). On 'locked' (the switch to WAL
    of two creators at once) the connection is closed and a new one looks again (and finds the file already WAL),
    for at most `patience` seconds. Raises the driver's own errors (`sqlite3.DatabaseError` on a file that is not
    a database)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with driver_errors():
                with engine.connect() as conn:
                    if engine.dialect.name == "sqlite":
                        _wal(conn)
                    if current(conn):
                        return
                with write_transaction(engine) as conn:  # a second creator waits here, then finds it current
                    migrate(conn)
                return
        except Exception as e:
            if not is_locked(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)
