"""The lineage store's file on disk, looked at before and after SQLite opens it (SQLite only: a store in another
database has no file).

- `header_problem`: why a file cannot be a whole SQLite database (not one, or shorter than its header says), asked
  of SQLite opened `immutable`, so a read-only command refuses a damaged store without SQLite creating
  `-wal`/`-shm` files beside it.
- `sidecars_created`: removes the `-wal`/`-shm` files (and the store) an open that failed on a full disk created.
- `readonly_uri`: how a read-only command opens the store, also from read-only media or a full disk.
- `out_of_space`: SQLite reports a full disk under its WAL or shared-memory file as "disk I/O error"; the free
  space of the folder tells the two apart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import inspect

from prefect_wandb.store_engine import driver_errors, engine_for

SIDECARS = ("-wal", "-shm", "-journal")


def header_problem(path: Path) -> str | None:
    """Why `path` is not a whole SQLite database (None: it may be one), asked of SQLite without -wal/-shm files.

    Never read with a Python file object: closing any descriptor of the database file drops every POSIX lock this
    process holds on it, so another process's connection would think itself the last one and checkpoint and delete
    the WAL under this process's open connections (a malformed database). SQLite's own descriptors keep the locks.
    `immutable=1` (no locks, no -wal/-shm) sees only the main file, which changes only when a checkpoint copies
    the WAL into it: with a WAL that holds pages, the main file may legitimately be behind, and is left alone."""
    wal = Path(f"{path}-wal")
    if wal.is_file() and wal.stat().st_size:
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a header longer than the file: malformed
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return str(e)
    size = path.stat().st_size
    if page_size and size % page_size:
        return f"truncated or damaged: {size} bytes is not a whole number of {page_size}-byte pages"
    return None


@contextmanager
def sidecars_created(path: Path, when: Callable[[BaseException], bool]) -> Iterator[None]:
    """On an error inside for which `when(error)` holds (a damaged store, a full disk: never a busy or locked one,
    whose files another process is using), remove the `-wal`, `-shm` and `-journal` files that were not beside
    `path` before (and `path` itself when this open created it)."""
    before = {s for s in SIDECARS if Path(f"{path}{s}").exists()}
    existed = path.exists()
    try:
        yield
    except BaseException as e:
        if not when(e):
            raise
        for s in SIDECARS:
            if s not in before:
                with contextlib.suppress(OSError):
                    Path(f"{path}{s}").unlink()
        if not existed:  # created by this open, which failed (a full disk): it records nothing, not even a schema
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def out_of_space(path: Path) -> bool:
    """True when the file system holding `path` has no block left for an ordinary user."""
    folder = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024  # less than a few SQLite pages: a write cannot go through


def disk_full(e: BaseException, path: Path) -> bool:
    """A full disk, as SQLite says it ("database or disk is full"), or as "disk I/O error" when the WAL or
    shared-memory file could not grow. An open that fails so leaves nothing it created (no 0-byte store)."""
    return isinstance(e, sqlite3.DatabaseError) and (
        "disk is full" in str(e) or ("disk I/O error" in str(e) and out_of_space(path)))


def _cannot_write_beside(path: Path) -> bool:
    """True where nothing can be created beside `path`: a read-only file system or folder, or a full disk."""
    folder = path.parent
    try:
        read_only_fs = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    return read_only_fs or not os.access(folder, os.W_OK) or out_of_space(path)


def readonly_uri(path: Path) -> str:
    """The URI a read-only command opens the store with: SQLite's `mode=ro`, or, where nothing can be created
    beside the file (read-only media such as a mounted backup, a read-only share, a full disk) and no WAL file holds
    pages the main file lacks, `mode=ro&immutable=1`. A WAL database needs its `-shm` file, which SQLite creates
    beside it, so a plain `mode=ro` open fails there ('unable to open database file', 'disk I/O error'); and there
    no process can change the file under this one, which is what `immutable` asks of the caller."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    wal = Path(f"{path}-wal")
    if not (wal.is_file() and wal.stat().st_size) and _cannot_write_beside(path):
        return uri + "&immutable=1"
    return uri


def readonly_problem(path: Path, uri: str) -> str | None:
    """Why `path` cannot be opened as a lineage store by a read-only command through `uri` (`readonly_uri`; None:
    it can). Nothing is created or written: a missing, empty, truncated or foreign file is refused, never given a
    fresh schema."""
    if not path.is_file():
        return "no lineage store there"
    if path.stat().st_size == 0:
        return ("the lineage store is empty (0 bytes), so it records nothing; if it was truncated, restore it from "
                "a backup")
    problem = header_problem(path)  # refused before SQLite opens it for real (and creates -wal/-shm)
    if problem:
        return f"not a readable lineage store ({problem})"
    # no clean-up of -wal/-shm after a failure here: they may be another process's, creating the store this moment
    try:
        with driver_errors(), engine_for(path, sqlite_uri=uri).connect() as conn:  # the engine the store reads with
            tables = set(inspect(conn).get_table_names())
            check = conn.exec_driver_sql("PRAGMA quick_check").scalar()
        if check != "ok":
            raise sqlite3.DatabaseError(f"damaged: {check}")
    except sqlite3.DatabaseError as e:
        return f"not a readable lineage store ({e})"
    if not {"runs", "artifacts", "artifact_files", "edges"} <= tables:
        return "an SQLite database, but not a lineage store (no runs/artifacts tables)"
    return None
