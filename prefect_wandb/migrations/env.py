"""Alembic's environment for the lineage store: the migrations run on the connection in
`config.attributes["connection"]` (`prefect_wandb.schema.migrate`, inside the store's write transaction, which
it commits), or, from Alembic's own command line, on a database named by `sqlalchemy.url`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from prefect_wandb.tables import metadata


def _run(connection) -> None:
    # SQLite cannot ALTER most things: a revision's batch_alter_table copies the table there
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():  # inside the caller's transaction: Alembic neither begins nor commits
        context.run_migrations()


if context.config.attributes.get("connection") is not None:
    _run(context.config.attributes["connection"])
else:
    with create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect() as conn:
        _run(conn)
        conn.commit()
