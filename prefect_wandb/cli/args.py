"""What the operator commands share: the program they run in (`Program`), parent parsers for the common flags, and
the one error line.

A command's parser takes the parents it needs (`add_command(sub, ..., parents=[P.store, P.json])`) instead of
declaring `--lineage-db` or `--json` again, and ends with `set_defaults(handler=...)`: a function of the parsed
namespace that returns an `Exit` member (exit_codes.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_wandb.exit_codes import EPILOG, Exit
from prefect_wandb.locations import LocationError, StoreURL, masked, store_location
from prefect_wandb.reproduce import Rebuild
from prefect_wandb.settings import STORE_ENV

if TYPE_CHECKING:
    from prefect_wandb.store import LineageStore

FORMATTER = argparse.RawDescriptionHelpFormatter


@dataclass(frozen=True)
class Program:
    """The program the operator commands run in: `prefect-wandb` by default, or a pipeline's own CLI
    (`my-pipeline audit ...`). `prog` names it in every message; `default_store` is `--lineage-db`'s default;
    `rebuilders` (job type -> rebuild function) are what `reproduce` can re-run; `code_root` and `packages` are what
    `reproduce` compares with the recorded environment; `allowed_roots_env` names the variable of the operator's
    allowed folders (`keygen --out` must be inside them)."""

    prog: str = "prefect-wandb"
    default_store: str = field(default_factory=lambda: os.environ.get(STORE_ENV) or "lineage/lineage.db")
    rebuilders: Mapping[str, Rebuild] = field(default_factory=dict)
    code_root: Path | None = None
    packages: tuple[str, ...] | None = None
    allowed_roots_env: str = "PREFECT_WANDB_ALLOWED_ROOTS"
    key_name: str = "signing"  # keygen writes DIR/<key_name>.key and .pub
    model_name: str | None = None  # rollback's --name default


_current = [Program()]


def program() -> Program:
    """The program the commands run in now (set by `prefect_wandb.cli.main`)."""
    return _current[0]


def use_program(p: Program) -> None:
    _current[0] = p


def err(cmd: str, msg: str) -> None:
    """The one line a command prints when it stops (never a traceback)."""
    prog = program().prog
    print(f"{prog} {cmd}: {msg}" if cmd else f"{prog}: {msg}", file=sys.stderr)  # noqa: T201


@dataclass(frozen=True)
class Parents:
    """The parent parsers of the operator commands: `store` (--lineage-db) and `json` (--json)."""

    store: argparse.ArgumentParser
    json: argparse.ArgumentParser


def parents(default_store: str | None = None) -> Parents:
    store = argparse.ArgumentParser(add_help=False)
    default = default_store or program().default_store
    store.add_argument("--lineage-db", default=default,
                       help="the lineage store: an SQLite file, or a PostgreSQL URL postgresql+psycopg://USER@HOST:PORT/DB "
                       f"(its password from PGPASSWORD or ~/.pgpass) (default: {masked(default)})".replace("%", "%%"))
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the result as JSON")
    return Parents(store=store, json=as_json)


def add_command(sub, name: str, *, help: str, parents: Sequence[argparse.ArgumentParser] = (), epilog: str = "",
                **kw) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its own notes (if any) and the exit-code table."""
    return sub.add_parser(name, help=help, parents=list(parents), formatter_class=FORMATTER,
                          epilog=(epilog + "\n" if epilog else "") + EPILOG, **kw)


def open_store(path: str, cmd: str, readonly: bool = True) -> LineageStore | Exit:
    """The store, or the exit code after one line: Exit.USAGE when there is none (or `path` is a URL of another
    scheme), Exit.STORE when it is empty, damaged or cannot be reached. Read-only by default (SQLite mode=ro; on
    PostgreSQL nothing migrated): a read-only command never writes. Every sub-command that works on an existing store
    opens it here (audit, sync, and prefect_wandb/cli/ops.py); the store is checked read-only first, so not even a
    writing command (rollback, gc) turns an empty or foreign file (or database) into a new store."""
    from prefect_wandb.store import LineageStore, StoreError

    try:
        loc = store_location(path, "--lineage-db")
    except LocationError as e:
        err(cmd, str(e))
        return Exit.USAGE
    if isinstance(loc, StoreURL):
        try:
            store = LineageStore(loc, readonly=True)
            return store if readonly else LineageStore(loc)
        except StoreError as e:
            err(cmd, str(e))
            return Exit.STORE
    db = loc.expanduser()
    if not db.is_file():
        err(cmd, f"no lineage store at {db} (give --lineage-db)")
        return Exit.USAGE
    try:
        store = LineageStore(db.resolve(), readonly=True)
        return store if readonly else LineageStore(db.resolve())
    except StoreError as e:
        err(cmd, str(e))
        return Exit.STORE


def identify_target(store, target: str, cmd: str):
    """(records, exit code): the artifact versions a file, folder or reference names."""
    from prefect_wandb.audit import AuditError, identify

    try:
        ident = identify(store, target)
    except AuditError as e:
        err(cmd, str(e))
        return None, Exit.USAGE
    if not ident.matches:
        what = "no such artifact version" if ident.kind == "ref" else "not produced by any recorded run"
        err(cmd, f"{target}: {what} in the lineage store {store.path}")
        return None, Exit.NOT_FOUND
    return ident.matches, Exit.OK
