"""The gate's comparison input: each decision records the artifact production's value was read from
(`production_metrics_id`, a metrics artifact of the production model), and the deciding run has it as a used edge,
so that the audit, `impact` and W&B show what a promotion was compared against. Rows written before have none
(NULL): the decision's reason names the model and the value, not the artifact.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa

from prefect_wandb.migrations.batch import batch as batch_of

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with batch_of("promotions") as batch:
        batch.add_column(sa.Column("production_metrics_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_promotions_production_metrics_id_artifacts", "artifacts",
                                 ["production_metrics_id"], ["artifact_id"])


def downgrade() -> None:
    with batch_of("promotions") as batch:
        batch.drop_constraint("fk_promotions_production_metrics_id_artifacts", type_="foreignkey")
        batch.drop_column("production_metrics_id")
