"""The one file hasher: a file read once in 1 MiB chunks into any number of hashlib digests."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path


def file_hashes(path: Path | str, *algorithms: str) -> dict[str, hashlib._Hash]:
    """`{algorithm: hash object}` of one file, read once (e.g. `file_hashes(p, "sha256", "md5")`)."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    return hashes


def sha256_file(path: Path | str) -> str:
    return file_hashes(path, "sha256")["sha256"].hexdigest()


def md5_b64(path: Path | str) -> str:
    """A file's md5 as W&B's artifact manifests hold it (base64 of the raw digest)."""
    return base64.b64encode(file_hashes(path, "md5")["md5"].digest()).decode()
