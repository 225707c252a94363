"""How a store written by the hand-written SQLite code (before Alembic, up to commit 796abb5) reaches the
baseline revision: that code's own upgrade, as it ran on every writable open. SQLite only (no other database ever
held a store without a version table).

`LEGACY_SCHEMA` is its DDL, every statement `IF NOT EXISTS`: a table an older release did not have (`rejections`,
`holds`, `deletions`, `wandb_gaps`) is created empty; `ADDED_COLUMNS`, columns an older release's `promotions`
lacks, are added empty, which reads as their older meaning (`kind` NULL: a decision of the promotion gate;
`test_set` NULL: the test set it was decided on is unknown, so that decision is never reused).
"""

from __future__ import annotations

from sqlalchemy import Connection

LEGACY_SCHEMA = """
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

ADDED_COLUMNS = (("promotions", "kind", "TEXT"), ("promotions", "requested_by", "TEXT"),
                 ("promotions", "test_set", "TEXT"))


def to_baseline(conn: Connection) -> None:
    """Bring a store of the hand-written schema (any release) to the baseline revision's tables, inside the
    caller's write transaction (statement by statement: sqlite3's executescript would commit it)."""
    for statement in LEGACY_SCHEMA.split(";"):
        if statement.strip():
            conn.exec_driver_sql(statement)
    for table, col, sql_type in ADDED_COLUMNS:
        if col not in {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({table})")}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {col} {sql_type}")
