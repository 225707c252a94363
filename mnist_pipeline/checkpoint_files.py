"""A training checkpoint's files, without torch: the checkpoint and its sidecar record beside it (`<name>.json`:
its sha256, the inputs it was written for, the run that wrote it). `training` writes and reads them; the skip path
and the sweep's workers only name or discard them, and need no torch for that."""

from __future__ import annotations

from pathlib import Path


def sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".json")


def discard_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)
