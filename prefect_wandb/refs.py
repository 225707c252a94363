"""Artifact versions by content: a folder's manifest and digest, its files verified against a record, the W&B names
of a version. `ArtifactRef`, the reference tasks hand each other, is a record (records.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefect_wandb.hashing import sha256_file
from prefect_wandb.records import ArtifactRef, FileRecord

__all__ = ["ArtifactRef", "DigestMismatch", "digest_alias", "fsync_tree", "manifest", "manifest_digest",
           "verify_files", "wandb_path", "wandb_ref"]


def digest_alias(digest: str) -> str:
    """`sha256-<digest[:16]>`: the W&B alias under which an artifact version with this digest is logged."""
    return f"sha256-{digest[:16]}"


def wandb_path(entity: str | None, project: str, tail: str) -> str:
    """`[entity/]project/tail`: a W&B run or artifact path (no entity: the API key's default entity)."""
    return f"{entity}/{project}/{tail}" if entity else f"{project}/{tail}"


def wandb_ref(entity: str | None, project: str, name: str, digest: str) -> str:
    """The W&B path of one exact artifact version: `[entity/]project/name:sha256-<digest[:16]>`."""
    return wandb_path(entity, project, f"{name}:{digest_alias(digest)}")


def manifest(directory: Path) -> tuple[FileRecord, ...]:
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return tuple(FileRecord(p.relative_to(directory).as_posix(), sha256_file(p), p.stat().st_size) for p in files)


def manifest_digest(files: tuple[FileRecord, ...]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relpath):
        h.update(f"{f.relpath}\0{f.sha256}\n".encode())
    return h.hexdigest()


def fsync_tree(directory: Path) -> None:
    """Flush every file and folder under `directory` to disk before it is renamed into place."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DigestMismatch(RuntimeError):
    """A file on disk no longer matches the digest its lineage record holds."""


def verify_files(path: Path, expected: tuple[FileRecord, ...]) -> None:
    """Raise DigestMismatch naming the first file that is missing or differs from its record."""
    for rec in expected:
        p = Path(path) / rec.relpath
        if not p.resolve().is_relative_to(Path(path).resolve()):
            raise DigestMismatch(f"{p}: recorded file path escapes its artifact folder {path}")
        if not p.is_file():
            raise DigestMismatch(f"{p}: missing (recorded sha256 {rec.sha256})")
        actual = sha256_file(p)
        if actual != rec.sha256:
            raise DigestMismatch(f"{p}: sha256 {actual} does not match the recorded {rec.sha256}")
