"""The lineage store's tables as SQLAlchemy Core objects: what the store's queries are written against, and the
schema that Alembic's newest revision (`prefect_wandb/migrations`) gives a store.

The layout is the one the hand-written SQLite schema had (column order included: `holds` and `artifact_files` are
written positionally by `INSERT ... VALUES` in older SQL, and a store of that schema is adopted as it is, so
`promotions.kind`, `requested_by` and `test_set`, once added by ALTER TABLE, stay its last columns). Types are the
portable ones (TEXT, INTEGER, FLOAT); on SQLite, `sqlite_autoincrement` keeps AUTOINCREMENT (an id is never
handed out twice, even after the newest row is deleted). A change here is a new revision in
`prefect_wandb/migrations/versions/`, and `tests/test_store_migrations.py` checks that head and this module agree.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

# Constraint names for the dialects that name every constraint (PostgreSQL), so that a later revision can drop one.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s", "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s"})


def _text(name: str, *, nullable: bool = False, **kw) -> Column:
    return Column(name, Text, nullable=nullable, **kw)


runs = Table(
    "runs", metadata,
    _text("run_id", primary_key=True), _text("job_type"), _text("status"), _text("flow_run_id", nullable=True),
    _text("run_group", nullable=True), _text("wandb_mode", nullable=True), _text("wandb_url", nullable=True),
    _text("wandb_dir", nullable=True), _text("wandb_project", nullable=True), _text("wandb_entity", nullable=True),
    _text("config_json"), _text("env_json"), _text("summary_json", server_default="{}"), _text("started_at"),
    _text("finished_at", nullable=True), _text("error", nullable=True),
    _text("lease_expires_at", nullable=True),  # 0003: renewed by its process while it runs
    CheckConstraint("status IN ('running', 'finished', 'failed')", name="status"))

artifacts = Table(
    "artifacts", metadata,
    Column("artifact_id", Integer, primary_key=True, autoincrement=True), _text("name"), _text("type"),
    Column("version", Integer, nullable=False), _text("digest"), _text("path"), _text("metadata_json"),
    Column("producer_run_id", Text, ForeignKey("runs.run_id"), nullable=False), _text("created_at"),
    UniqueConstraint("name", "digest"), UniqueConstraint("name", "version"),
    sqlite_autoincrement=True)

artifact_files = Table(
    "artifact_files", metadata,
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), primary_key=True),
    _text("relpath", primary_key=True), _text("sha256"), Column("size", Integer, nullable=False),
    Index("files_by_sha", "sha256"))

edges = Table(
    "edges", metadata,
    Column("run_id", Text, ForeignKey("runs.run_id"), primary_key=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), primary_key=True),
    _text("direction", primary_key=True),
    CheckConstraint("direction IN ('used', 'produced')", name="direction"),
    Index("edges_by_artifact", "artifact_id", "direction"))

aliases = Table(
    "aliases", metadata,
    _text("name", primary_key=True), _text("alias", primary_key=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), nullable=False), _text("set_at"))

promotions = Table(
    "promotions", metadata,
    Column("promotion_id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), nullable=False),
    _text("decision"), _text("reason"), Column("candidate_value", Float),
    Column("validation_passed", Integer, nullable=False),
    Column("production_artifact_id", Integer, ForeignKey("artifacts.artifact_id")),
    Column("production_value", Float), Column("margin", Float, nullable=False),
    _text("flow_run_id", nullable=True), _text("decided_at"), _text("wandb_applied_at", nullable=True),
    _text("kind", nullable=True), _text("requested_by", nullable=True), _text("test_set", nullable=True),
    _text("metric", nullable=True), _text("aliases", nullable=True),  # 0002: what it compared, what it moved
    Column("production_metrics_id", Integer, ForeignKey("artifacts.artifact_id")),  # 0004: production_value's source
    CheckConstraint("decision IN ('promoted', 'candidate')", name="decision"),
    sqlite_autoincrement=True)

wandb_gaps = Table(
    "wandb_gaps", metadata,
    Column("run_id", Text, ForeignKey("runs.run_id"), primary_key=True), _text("action", primary_key=True),
    _text("ref", primary_key=True), _text("call"), _text("error"), _text("detail", server_default=""),
    _text("recorded_at"),
    CheckConstraint("action IN ('upload', 'use', 'aliases')", name="action"))

deletions = Table(
    "deletions", metadata,
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), primary_key=True, autoincrement=False),
    _text("path"), Column("bytes", Integer, nullable=False), _text("reason"), _text("deleted_by"),
    _text("deleted_at"))

holds = Table(
    "holds", metadata,
    _text("flow_run_id", primary_key=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), primary_key=True, autoincrement=False),
    _text("process_json"), _text("taken_at"), _text("lease_expires_at", nullable=True))  # 0003

rejections = Table(
    "rejections", metadata,
    Column("rejection_id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.artifact_id"), nullable=False),
    _text("action"), _text("source"), _text("reason"), _text("requested_by"), _text("at"),
    CheckConstraint("action IN ('reject', 'unreject')", name="action"),
    sqlite_autoincrement=True)

sync_log = Table(
    "sync_log", metadata,
    _text("run_id", primary_key=True), _text("action", primary_key=True), _text("ref", primary_key=True),
    _text("detail", nullable=True), _text("done_at"),
    CheckConstraint("action IN ('upload', 'use')", name="action"))
