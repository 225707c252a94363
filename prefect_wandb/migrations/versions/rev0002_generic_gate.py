"""The gate's record names no metric of its own: `candidate_accuracy` / `production_accuracy` become
`candidate_value` / `production_value`, and each decision records which metric it compared (`metric`) and which
aliases it moved (`aliases`, a JSON list): the alias names are the caller's policy, not the store's. Rows written
before have neither (NULL): they compared test accuracy and moved `candidate` / `production`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa

from prefect_wandb.migrations.batch import batch as batch_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with batch_of("promotions") as batch:
        batch.alter_column("candidate_accuracy", new_column_name="candidate_value")
        batch.alter_column("production_accuracy", new_column_name="production_value")
        batch.add_column(sa.Column("metric", sa.Text, nullable=True))
        batch.add_column(sa.Column("aliases", sa.Text, nullable=True))


def downgrade() -> None:
    with batch_of("promotions") as batch:
        batch.drop_column("aliases")
        batch.drop_column("metric")
        batch.alter_column("production_value", new_column_name="production_accuracy")
        batch.alter_column("candidate_value", new_column_name="candidate_accuracy")
