"""Baseline: the lineage store's schema as the hand-written SQLite store left it (commit 796abb5).

A store made by that code has no version table: `prefect_wandb.schema` brings it up to this schema with that
code's own steps (`migrations/legacy.py`) and stamps it here, so this revision runs only on an empty database.
Frozen: a later change is a revision of its own, never an edit here.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# frozen here, not imported from tables.py: this revision must create the same tables whatever tables.py becomes
NAMING = {"ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s", "pk": "pk_%(table_name)s",
          "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s"}


def _text(name: str, *, nullable: bool = False, **kw) -> sa.Column:
    return sa.Column(name, sa.Text, nullable=nullable, **kw)


def _ref(name: str, table: str, column: str, type_=sa.Integer, **kw) -> sa.Column:
    return sa.Column(name, type_, sa.ForeignKey(f"{table}.{column}"), **kw)


def _tables() -> sa.MetaData:
    meta = sa.MetaData(naming_convention=NAMING)
    sa.Table(
        "runs", meta,
        _text("run_id", primary_key=True), _text("job_type"), _text("status"), _text("flow_run_id", nullable=True),
        _text("run_group", nullable=True), _text("wandb_mode", nullable=True), _text("wandb_url", nullable=True),
        _text("wandb_dir", nullable=True), _text("wandb_project", nullable=True),
        _text("wandb_entity", nullable=True), _text("config_json"), _text("env_json"),
        _text("summary_json", server_default="{}"), _text("started_at"), _text("finished_at", nullable=True),
        _text("error", nullable=True),
        sa.CheckConstraint("status IN ('running', 'finished', 'failed')", name="status"))
    sa.Table(
        "artifacts", meta,
        sa.Column("artifact_id", sa.Integer, primary_key=True, autoincrement=True), _text("name"), _text("type"),
        sa.Column("version", sa.Integer, nullable=False), _text("digest"), _text("path"), _text("metadata_json"),
        _ref("producer_run_id", "runs", "run_id", sa.Text, nullable=False), _text("created_at"),
        sa.UniqueConstraint("name", "digest"), sa.UniqueConstraint("name", "version"),
        sqlite_autoincrement=True)
    sa.Table(
        "artifact_files", meta,
        _ref("artifact_id", "artifacts", "artifact_id", primary_key=True), _text("relpath", primary_key=True),
        _text("sha256"), sa.Column("size", sa.Integer, nullable=False), sa.Index("files_by_sha", "sha256"))
    sa.Table(
        "edges", meta,
        _ref("run_id", "runs", "run_id", sa.Text, primary_key=True),
        _ref("artifact_id", "artifacts", "artifact_id", primary_key=True), _text("direction", primary_key=True),
        sa.CheckConstraint("direction IN ('used', 'produced')", name="direction"),
        sa.Index("edges_by_artifact", "artifact_id", "direction"))
    sa.Table(
        "aliases", meta,
        _text("name", primary_key=True), _text("alias", primary_key=True),
        _ref("artifact_id", "artifacts", "artifact_id", nullable=False), _text("set_at"))
    sa.Table(
        "promotions", meta,
        sa.Column("promotion_id", sa.Integer, primary_key=True, autoincrement=True),
        _ref("artifact_id", "artifacts", "artifact_id", nullable=False), _text("decision"), _text("reason"),
        sa.Column("candidate_accuracy", sa.Float), sa.Column("validation_passed", sa.Integer, nullable=False),
        _ref("production_artifact_id", "artifacts", "artifact_id"), sa.Column("production_accuracy", sa.Float),
        sa.Column("margin", sa.Float, nullable=False), _text("flow_run_id", nullable=True), _text("decided_at"),
        _text("wandb_applied_at", nullable=True),
        # added by ALTER TABLE in the hand-written store, hence last
        _text("kind", nullable=True), _text("requested_by", nullable=True), _text("test_set", nullable=True),
        sa.CheckConstraint("decision IN ('promoted', 'candidate')", name="decision"),
        sqlite_autoincrement=True)
    sa.Table(
        "wandb_gaps", meta,
        _ref("run_id", "runs", "run_id", sa.Text, primary_key=True), _text("action", primary_key=True),
        _text("ref", primary_key=True), _text("call"), _text("error"), _text("detail", server_default=""),
        _text("recorded_at"),
        sa.CheckConstraint("action IN ('upload', 'use', 'aliases')", name="action"))
    sa.Table(
        "deletions", meta,
        _ref("artifact_id", "artifacts", "artifact_id", primary_key=True, autoincrement=False), _text("path"),
        sa.Column("bytes", sa.Integer, nullable=False), _text("reason"), _text("deleted_by"), _text("deleted_at"))
    sa.Table(
        "holds", meta,
        _text("flow_run_id", primary_key=True),
        _ref("artifact_id", "artifacts", "artifact_id", primary_key=True, autoincrement=False),
        _text("process_json"), _text("taken_at"))
    sa.Table(
        "rejections", meta,
        sa.Column("rejection_id", sa.Integer, primary_key=True, autoincrement=True),
        _ref("artifact_id", "artifacts", "artifact_id", nullable=False), _text("action"), _text("source"),
        _text("reason"), _text("requested_by"), _text("at"),
        sa.CheckConstraint("action IN ('reject', 'unreject')", name="action"),
        sqlite_autoincrement=True)
    sa.Table(
        "sync_log", meta,
        _text("run_id", primary_key=True), _text("action", primary_key=True), _text("ref", primary_key=True),
        _text("detail", nullable=True), _text("done_at"),
        sa.CheckConstraint("action IN ('upload', 'use')", name="action"))
    return meta


def upgrade() -> None:
    _tables().create_all(op.get_bind())


def downgrade() -> None:
    _tables().drop_all(op.get_bind())
