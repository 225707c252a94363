"""Leases: a running run and a hold carry `lease_expires_at`, which their process keeps renewing while it works
(`LineageStore.renew_lease`, a stage's heartbeat). On a store shared by many hosts, a process on another host
cannot be looked up in /proc: once its lease has expired, its run is marked failed and its holds dropped, as a
dead process's on this host are. Rows written before (NULL) have no lease: they are judged as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa

from prefect_wandb.migrations.batch import batch as batch_of

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("runs", "holds"):
        with batch_of(table) as batch:
            batch.add_column(sa.Column("lease_expires_at", sa.Text, nullable=True))


def downgrade() -> None:
    for table in ("runs", "holds"):
        with batch_of(table) as batch:
            batch.drop_column("lease_expires_at")
