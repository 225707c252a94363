"""Writing files so that a full disk or a refused write says where and why, and leaves nothing half-written.

A serialiser that hides the OS error (torch.save reports a full disk as `RuntimeError: [enforce fail ...]`) writes
to memory first and hands the bytes to `write_bytes_atomic`, which keeps the errno. No Prefect, no W&B.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Errors of the place being written to, not of the moment: a retry fails the same way.
__all__ = ["StorageError", "check_writable", "is_storage_error", "tmp_name", "write_bytes_atomic", "write_json", "writing"]

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


class StorageError(RuntimeError):
    """A write refused by the file system (disk full, read-only, permission denied); names the path."""

    def __init__(self, code: int, path: Path | str, action: str = "writing"):
        self.errno, self.path = code, str(path)
        super().__init__(f"{os.strerror(code)} while {action} {path}")


def is_storage_error(e: BaseException) -> bool:
    return isinstance(e, StorageError) or (isinstance(e, OSError) and e.errno in STORAGE_ERRNOS)


@contextmanager
def writing(path: Path | str, action: str = "writing") -> Iterator[None]:
    """Turn a storage OSError raised inside into a StorageError naming `path` (the OS may not name it)."""
    try:
        yield
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(e.errno, e.filename or path, action) from e
        raise


def tmp_name(dest: Path) -> Path:
    """A temporary name beside `dest`, unique to this writer: two runs may write the same file at once."""
    return dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def write_bytes_atomic(dest: Path, blob: bytes | memoryview, fsync: bool = False) -> None:
    """Write `blob` to `dest` through a temporary name: a reader sees the old file or the new one; on failure
    (a full disk) the temporary file is removed and the error names `dest`."""
    dest = Path(dest)
    tmp = tmp_name(dest)
    try:
        with tmp.open("wb") as f:
            f.write(blob)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(dest)
    except OSError as e:  # named by the file meant, not by its temporary name
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(e.errno, dest) from e
        raise
    finally:
        with contextlib.suppress(OSError):  # a read-only disk refuses even to unlink what is not there
            tmp.unlink(missing_ok=True)


def check_writable(path: Path, what: str) -> None:
    """Create `path` (a folder) if needed and prove a file can be written in it; a StorageError names it."""
    path = Path(path)
    probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as e:  # any refusal (read-only, full, a file in the way): this folder cannot be used
        raise StorageError(e.errno or errno.EIO, path, f"preparing {what}") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    """Sorted keys, fixed indent, a final newline: the same dict always gives the same bytes (an artifact's digest
    depends on nothing else); written atomically, naming the path on a full or read-only disk. NaN and infinity
    are refused (ValueError): they are not JSON, and other readers (W&B, browsers, jq) reject the file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False)
    write_bytes_atomic(Path(path), (text + "\n").encode())
