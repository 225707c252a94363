"""The audit's verification: every file it can reach re-hashed against its record, and each record checked
against itself (digest, file list, producer, inputs)."""

from __future__ import annotations

from pathlib import Path

from prefect_wandb.artifact_files import RemoteArtifactsError, local_folder
from prefect_wandb.audit.entries import Check
from prefect_wandb.hashing import sha256_file
from prefect_wandb.layout import folder_name
from prefect_wandb.refs import DigestMismatch, manifest_digest
from prefect_wandb.store import ArtifactRecord


class Verifier:
    def __init__(self, deleted: dict | None = None) -> None:
        self.cache: dict[Path, str | None] = {}
        self.checks: list[Check] = []
        self.deleted = deleted or {}  # artifact_id -> DeletionRecord: removed by gc on purpose, not missing

    def _sha(self, path: Path) -> str | None:
        if path not in self.cache:
            try:
                self.cache[path] = sha256_file(path)
            except OSError:
                self.cache[path] = None
        return self.cache[path]

    def add(self, kind: str, artifact: str | None, path: str, status: str, expected: str | None = None,
            actual: str | None = None, detail: str = "") -> Check:
        c = Check(kind, artifact, path, status, expected, actual, detail)
        self.checks.append(c)
        return c

    def file(self, kind: str, artifact: str | None, path: Path, expected: str, *, required: bool) -> Check:
        if not path.is_file():
            return self.add(kind, artifact, str(path), "missing" if required else "unreachable", expected,
                            detail=f"missing (recorded sha256 {expected})" if required
                            else "not on this machine; not checked")
        actual = self._sha(path)
        if actual is None:
            return self.add(kind, artifact, str(path), "unreadable", expected, detail="cannot be read")
        if actual != expected:
            return self.add(kind, artifact, str(path), "mismatch", expected, actual,
                            f"sha256 {actual} does not match the recorded {expected}")
        return self.add(kind, artifact, str(path), "ok", expected, actual)

    def artifact(self, rec: ArtifactRecord, used: dict[str, list[ArtifactRecord]]) -> None:
        lab = rec.label
        gone = self.deleted.get(rec.artifact_id)
        try:  # a version in S3: this host's cache copy, fetched and verified by sha256 if it is not there yet
            base = local_folder(rec.path, None if gone is not None else rec.files)
        except (DigestMismatch, RemoteArtifactsError) as e:
            base = local_folder(rec.path)
            self.add("artifact-file", lab, rec.path, "mismatch" if isinstance(e, DigestMismatch) else "unreadable",
                     detail=str(e))
        for f in rec.files:
            if gone is not None and not (base / f.relpath).exists():
                self.add("artifact-file", lab, str(base / f.relpath), "deleted", f.sha256,
                         detail=f"deleted by gc on {gone.deleted_at[:10]} ({gone.deleted_by}): {gone.reason}")
                continue
            self.file("artifact-file", lab, base / f.relpath, f.sha256, required=True)
        if base.is_dir():
            recorded = {f.relpath for f in rec.files}
            for p in sorted(base.rglob("*")):
                if p.is_file() and p.relative_to(base).as_posix() not in recorded:
                    self.add("artifact-file", lab, str(p), "unrecorded",
                             detail="file in the artifact folder that is not on record (added since)")
        # the record itself: its digest is the hash of its file list, and its metadata repeats that list
        problems = []
        if manifest_digest(rec.files) != rec.digest:
            problems.append("its digest is not the hash of its recorded files")
        meta_files = rec.metadata.get("files")
        if meta_files is not None and meta_files != {f.relpath: f.sha256 for f in rec.files}:
            problems.append("its metadata lists other file digests than its file records")
        escaping = [f.relpath for f in rec.files if not (base / f.relpath).resolve().is_relative_to(base.resolve())]
        if escaping:
            problems.append(f"recorded file path(s) {', '.join(escaping)} escape its folder")
        if base.name != folder_name(rec.digest):
            problems.append(f"its folder {base.name!r} is not named after its digest {rec.digest[:16]!r}")
        producer = rec.metadata.get("producer", {}).get("run_id")
        if producer and producer != rec.producer_run_id:
            problems.append(f"its metadata names producer run {producer}, the store {rec.producer_run_id}")
        inputs = rec.metadata.get("inputs")
        if inputs is not None and rec.producer_run_id in used:
            on_record = {(u.name, u.digest) for u in used[rec.producer_run_id]}
            if {(i["name"], i["digest"]) for i in inputs} != on_record:
                problems.append("its metadata names other inputs than its producing run's recorded edges")
        self.add("record", lab, rec.path, "inconsistent" if problems else "ok",
                 detail="; ".join(problems) if problems else "digest, file list, producer and inputs agree")

    def raw_files(self, rec: ArtifactRecord) -> None:
        meta = rec.metadata
        if "raw_files" not in meta:
            return
        location = meta.get("source_location")
        for raw in meta["raw_files"]:
            if raw.get("stored") and raw.get("stored_sha256"):  # the immutable copy the dataset was read from
                self.file("raw-file", rec.label, Path(raw["stored"]), raw["stored_sha256"], required=False)
                continue
            path = Path(raw["origin"]) if raw.get("origin") else (Path(location) / raw["name"] if location else None)
            if path is None:
                continue
            self.file("raw-file", rec.label, path, raw["sha256"], required=False)
