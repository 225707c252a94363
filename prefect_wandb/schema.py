"""The lineage store's SQLite schema, how a file gets it (`ensure_schema`, also when two processes create the store
at once), and the one migration an older store needs (`upgrade`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    job_type      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    flow_run_id   TEXT,
    run_group     TEXT,
    wandb_mode    TEXT,
    wandb_url     TEXT,
    wandb_dir     TEXT,
    wandb_project TEXT,
    wandb_entity  TEXT,
    config_json   TEXT NOT NULL,
    env_json      TEXT NOT NULL,
    summary_json  TEXT NOT NULL DEFAULT '{}',
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    error         TEXT
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    type            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    digest          TEXT NOT NULL,
    path            TEXT NOT NULL,
    metadata_json   TEXT NOT NULL,
    producer_run_id TEXT NOT NULL REFERENCES runs(run_id),
    created_at      TEXT NOT NULL,
    UNIQUE (name, digest),
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS artifact_files (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    relpath     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (artifact_id, relpath)
);
CREATE TABLE IF NOT EXISTS edges (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    direction   TEXT NOT NULL CHECK (direction IN ('used', 'produced')),
    PRIMARY KEY (run_id, artifact_id, direction)
);
CREATE TABLE IF NOT EXISTS aliases (
    name        TEXT NOT NULL,
    alias       TEXT NOT NULL,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    set_at      TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS promotions (
    promotion_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id            INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    decision               TEXT NOT NULL CHECK (decision IN ('promoted', 'candidate')),
    reason                 TEXT NOT NULL,
    candidate_accuracy     REAL,
    validation_passed      INTEGER NOT NULL,
    production_artifact_id INTEGER REFERENCES artifacts(artifact_id),
    production_accuracy    REAL,
    margin                 REAL NOT NULL,
    flow_run_id            TEXT,
    decided_at             TEXT NOT NULL,
    wandb_applied_at       TEXT
);
CREATE INDEX IF NOT EXISTS files_by_sha ON artifact_files(sha256);
CREATE INDEX IF NOT EXISTS edges_by_artifact ON edges(artifact_id, direction);
CREATE TABLE IF NOT EXISTS wandb_gaps (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    action      TEXT NOT NULL CHECK (action IN ('upload', 'use', 'aliases')),
    ref         TEXT NOT NULL,
    call        TEXT NOT NULL,
    error       TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, action, ref)
);
CREATE TABLE IF NOT EXISTS deletions (
    artifact_id INTEGER PRIMARY KEY REFERENCES artifacts(artifact_id),
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    deleted_by  TEXT NOT NULL,
    deleted_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    flow_run_id  TEXT NOT NULL,
    artifact_id  INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    process_json TEXT NOT NULL,
    taken_at     TEXT NOT NULL,
    PRIMARY KEY (flow_run_id, artifact_id)
);
CREATE TABLE IF NOT EXISTS rejections (
    rejection_id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id  INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    action       TEXT NOT NULL CHECK (action IN ('reject', 'unreject')),
    source       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_log (
    run_id  TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('upload', 'use')),
    ref     TEXT NOT NULL,
    detail  TEXT,
    done_at TEXT NOT NULL,
    PRIMARY KEY (run_id, action, ref)
);
"""


# Columns that SCHEMA has but a store created by an older release lacks: (table, column, SQL type). Each is added
# empty, which reads as the older meaning (`promotions.kind` NULL: a decision of the promotion gate;
# `promotions.test_set` NULL: the test set it was decided on is unknown, so that decision is never reused).
# A table SCHEMA has and an older store lacks (`rejections`) is created by SCHEMA's CREATE TABLE IF NOT EXISTS,
# which every writable open runs before `upgrade`; read-only readers treat it as empty (`rejections.py`).
# a W&B gap recorded before W&B was asked (call 'unconfirmed'), dropped once W&B answered for that ref
DROP_PENDING_GAP = "DELETE FROM wandb_gaps WHERE run_id = ? AND ref = ? AND call = 'unconfirmed'"

ADDED_COLUMNS = (("promotions", "kind", "TEXT"), ("promotions", "requested_by", "TEXT"),
                 ("promotions", "test_set", "TEXT"))


def upgrade(con: sqlite3.Connection) -> None:
    """Bring an older store up to SCHEMA: the one migration the store knows, adding ADDED_COLUMNS."""
    for table, col, sql_type in ADDED_COLUMNS:
        if col in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
            continue
        try:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {sql_type}")
        except sqlite3.OperationalError as e:  # another process added it a moment ago
            if "duplicate column" not in str(e):
                raise


def ensure_schema(connect: Callable[[], sqlite3.Connection], patience: float = 30.0) -> None:
    """Make the store's file a WAL database with SCHEMA, upgraded (`connect()` opens it). Two processes creating a
    new store at once: one may have begun its switch to WAL while the file was still in rollback mode, and the
    other's WAL connections then hold the lock that switch waits for, whatever SQLite's busy handler does ('database
    is locked', at once). So the switch is tried on a short timeout, and on 'locked' the connection is closed and a
    new one looks again (and finds the file already WAL), for at most `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        con = connect()
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA busy_timeout=250")
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA busy_timeout=30000")
            con.executescript(SCHEMA)
            upgrade(con)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        finally:
            con.close()
        time.sleep(0.05)
