"""What an audit is about: a file (by its sha256, or by its place in the artifact folders), a directory or an
artifact reference (`model-onnx:v0`, `model:production`, `model:sha256-0123abcd...`), found in the store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prefect_wandb.artifact_files import local_folder
from prefect_wandb.audit.entries import AuditError, NearMiss
from prefect_wandb.audit.signatures import is_signature_of
from prefect_wandb.hashing import sha256_file
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import ArtifactRecord, LineageStore

REF_RE = re.compile(r"^(?:[\w.-]+/){0,2}(?P<name>[\w.-]+):(?P<sel>[\w.-]+)$")


@dataclass
class Identification:
    query: str
    kind: str  # 'file', 'directory' or 'ref'
    matches: list[ArtifactRecord]
    how: str | None = None  # 'sha256', 'location', 'manifest', 'ref'
    sha256: str | None = None  # of the queried file
    path: Path | None = None
    relpath: str | None = None  # the queried file inside the matched artifact


def _by_location(store: LineageStore, path: Path) -> tuple[ArtifactRecord, str] | None:
    """The artifact whose folder holds `path` (how a file edited in place is still recognised)."""
    for rec in store.artifacts():
        base = local_folder(rec.path)  # for a version in S3, this host's cache copy
        if path == base or base in path.parents:
            return rec, path.relative_to(base).as_posix()
    return None


def _without_signatures(matches: list[ArtifactRecord]) -> list[ArtifactRecord]:
    """An attestation holds a copy of the file it signs: when the signed artifact matches too, that one is the
    subject and the attestation its signature (the audit shows it there), not a second subject."""
    return [m for m in matches if not any(is_signature_of(m, o) for o in matches)]


def resolve_ref(store: LineageStore, ref: str) -> list[ArtifactRecord]:
    """`name:vN`, `name:sha256-<hex>`, `name:<hex prefix>`, `name:latest` or `name:<alias>` (e.g. production),
    optionally prefixed by `entity/project/` as in W&B."""
    m = REF_RE.match(ref)
    if not m:
        return []
    name, sel = m["name"], m["sel"]
    versions = [a for a in store.artifacts() if a.name == name]
    if not versions:
        return []
    if re.fullmatch(r"v\d+", sel):
        return [a for a in versions if a.version == int(sel[1:])]
    if sel == "latest":
        return [max(versions, key=lambda a: a.version)]
    hexpart = sel.removeprefix("sha256-").lower()
    if re.fullmatch(r"[0-9a-f]{8,64}", hexpart):
        found = [a for a in versions if a.digest.startswith(hexpart)]
        if found:
            return found
    rec = store.alias(name, sel)
    return [rec] if rec else []


def identify(store: LineageStore, target: str) -> Identification:
    path = Path(target).expanduser()
    if path.is_file():
        path = path.resolve()
        sha = sha256_file(path)
        matches = _without_signatures(store.artifacts_with_file(sha))
        if matches:
            relpath = next(f.relpath for f in matches[0].files if f.sha256 == sha)
            return Identification(target, "file", matches, "sha256", sha, path, relpath)
        loc = _by_location(store, path)
        if loc:  # in an artifact folder, but its content is not on record: edited or swapped in place
            return Identification(target, "file", [loc[0]], "location", sha, path, loc[1])
        return Identification(target, "file", [], None, sha, path)
    if path.is_dir():
        path = path.resolve()
        loc = _by_location(store, path)
        if loc:
            return Identification(target, "directory", [loc[0]], "location", None, path)
        files = manifest(path)
        digest = manifest_digest(files) if files else None
        matches = [a for a in store.artifacts() if a.digest == digest]
        return Identification(target, "directory", matches, "manifest" if matches else None, digest, path)
    if REF_RE.match(target):
        matches = resolve_ref(store, target)
        return Identification(target, "ref", matches, "ref" if matches else None)
    raise AuditError(f"{target}: no such file or directory, and not an artifact reference (name:version)")


def near_misses(store: LineageStore, path: Path) -> list[NearMiss]:
    """Recorded files with the same name (and, first, the same size): a hint for a copy that was altered."""
    size = path.stat().st_size
    out = []
    for rec in store.artifacts():
        for f in rec.files:
            if Path(f.relpath).name == path.name:
                out.append(NearMiss(rec.label, f.relpath, f.sha256, f.size, f.size == size))
    return sorted(out, key=lambda d: not d.same_size)[:5]


