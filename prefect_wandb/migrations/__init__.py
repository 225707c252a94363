"""The lineage store's schema versions, as Alembic migrations shipped inside the package.

`env.py` runs them on the connection `prefect_wandb.schema` hands it (inside the store's write transaction);
`versions/` holds one revision per schema change, the first (`BASELINE`) being the schema the hand-written SQLite
store had. `HEAD` is the newest revision: a store already there is opened without loading Alembic at all.

A new revision: change `prefect_wandb/tables.py`, then, from the repository root,

    python -c "from alembic import command; from prefect_wandb.schema import alembic_config; \\
               command.revision(alembic_config(), 'what changes', rev_id='0002')"

write its upgrade() (with `batch.batch(table)`, Alembic's `op.batch_alter_table` keeping an adopted store's
unnamed CHECK constraints, where SQLite cannot ALTER), set `HEAD` below to its id, and run
tests/test_store_migrations.py (head must equal tables.py, and HEAD the scripts' head).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent  # the script_location: works from a checkout and an installed copy
BASELINE = "0001"  # the hand-written schema: a store without a version table is stamped here once adopted
HEAD = "0004"
# columns a revision renamed: old name -> new name, for reading a store as it is (read-only opens never migrate)
RENAMED_COLUMNS = {"promotions": {"candidate_" + "accuracy": "candidate_value",  # 0002
                                  "production_" + "accuracy": "production_value"}}
