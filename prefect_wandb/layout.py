"""The artifacts folder's layout, written down in one place:

    <artifacts_dir>/<type>/<name>/<digest[:16]>/   one stored artifact version (named by its content)
    <artifacts_dir>/.staging/<run_id>/<name>/      a running stage's outputs, before they are recorded
    <artifacts_dir>/.checkpoints/                  training checkpoints a rerun resumes from
    <artifacts_dir>/.trash/                        what gc moves aside before deleting it

With artifacts in S3 (`artifact_files`), `<artifacts_dir>` is the local cache of `s3://bucket/prefix`, and each
version is also at `s3://bucket/prefix/<type>/<name>/<digest[:16]>/` (the same keys remotely).
"""

from __future__ import annotations

import re
from pathlib import Path

STAGING, CHECKPOINTS, TRASH = ".staging", ".checkpoints", ".trash"
_FOLDER_NAME = re.compile(r"[0-9a-f]{16}")


def folder_name(digest: str) -> str:
    """The folder name of the artifact version with this digest."""
    return digest[:16]


def version_folder(artifacts_dir: Path, type: str, name: str, digest: str) -> Path:
    return Path(artifacts_dir) / type / name / folder_name(digest)


def staging_folder(artifacts_dir: Path, run_id: str) -> Path:
    return Path(artifacts_dir) / STAGING / run_id


def candidate_folders(artifacts_dir: Path) -> list[Path]:
    """Every folder at the place of a version folder (`<type>/<name>/<folder>`, type not hidden), sorted."""
    artifacts_dir = Path(artifacts_dir)
    if not artifacts_dir.is_dir():
        return []
    return sorted(p for p in artifacts_dir.glob("*/*/*") if p.is_dir() and not p.parts[-3].startswith("."))


def stored_folders(artifacts_dir: Path) -> list[Path]:
    """The candidate folders named like a stored version (16 hex digits), which only a lineage store vouches for."""
    return [p for p in candidate_folders(artifacts_dir) if _FOLDER_NAME.fullmatch(p.name)]
