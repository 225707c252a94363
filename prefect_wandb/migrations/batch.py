"""`batch(table)`: Alembic's `op.batch_alter_table`, keeping a store's unnamed CHECK constraints.

On SQLite a batch operation may copy the table into a new one, built from what SQLAlchemy reflects; it omits a
CHECK constraint without a name (Alembic warns). The hand-written SQLite stores adopted at `BASELINE` declared their
checks without names (`status TEXT NOT NULL CHECK (status IN (...))`), so upgrading one lost, for instance,
`promotions.decision`'s. Each such check is handed back to the new table under the name a store made at head gives
it (`ck_<table>_<column>`, the naming convention of `prefect_wandb.tables`); named ones are reflected and kept, and
PostgreSQL names every check itself.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op


def _unnamed_checks(table: str) -> tuple[sa.CheckConstraint, ...]:
    found = sa.inspect(op.get_bind()).get_check_constraints(table)
    out = []
    for c in found:
        if c.get("name"):
            continue
        column = re.match(r"\s*\(?\s*\"?(\w+)", c["sqltext"])
        if column is None:  # not the shape this store ever wrote: keep it under SQLAlchemy's own name
            out.append(sa.CheckConstraint(c["sqltext"]))
        else:
            out.append(sa.CheckConstraint(c["sqltext"], name=op.f(f"ck_{table}_{column.group(1)}")))
    return tuple(out)


@contextmanager
def batch(table: str) -> Iterator[Any]:
    """`op.batch_alter_table(table)`, with the table's unnamed CHECK constraints passed back explicitly."""
    checks = _unnamed_checks(table)
    with warnings.catch_warnings():
        if checks:  # they are handed back: the warning that they would be lost does not apply
            warnings.filterwarnings("ignore", message="Unnamed CHECK constraint on reflected table")
        with op.batch_alter_table(table, table_args=checks) as b:
            yield b
