"""Provenance audit: which data, code and settings made a file, and is every one of them still intact?

`audit(store, target)` identifies a file (by its sha256, or by its place in the artifact folders), a directory
or an artifact reference (`convnet-onnx:v0`, `convnet:production`, `convnet:sha256-0123abcd...`) in the lineage
store, walks the lineage back to the data (producing runs, their inputs, recursively) and forward (evaluations,
onnxruntime validation, promotion decisions), and re-hashes every file it can reach. The result is one plain dict
(the `--json` output); `render.py` draws it (tree, Mermaid/Markdown, HTML, SVG).

Pure: it reads the store and the files on disk; no Prefect, no wandb. The W&B cross-check of `audit --online`
happens in `sync.py` through the W&B boundary (`lineage/wandb/`) and comes back here as plain data
(`apply_wandb_findings`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from mnist_pipeline.lineage.refs import digest_alias, manifest, manifest_digest, sha256_file
from mnist_pipeline.lineage.store import ArtifactRecord, LineageStore

# Exit codes of `mnist-pipeline audit` (also in its --help and the README).
EXIT_VERIFIED = 0  # identified, and every reachable digest matches
EXIT_ERROR = 1  # could not complete (e.g. --online and W&B unreachable)
EXIT_USAGE = 2  # bad arguments: no such file, no lineage store
EXIT_TAMPERED = 3  # a file (or a record) does not match its recorded digest: the mismatching file is named
EXIT_UNKNOWN = 4  # not produced by any recorded run

STATUS_EXIT = {"verified": EXIT_VERIFIED, "tampered": EXIT_TAMPERED, "unknown": EXIT_UNKNOWN}
FAILED = {"mismatch", "missing", "unreadable", "unrecorded", "inconsistent"}

# The config section that matters for each job type, shown in the tree (the JSON holds the whole config).
CONFIG_SECTION = {"prepare-data": "data", "train": "train", "evaluate": "evaluate", "export-onnx": "onnx",
                  "validate-onnx": "onnx"}
REF_RE = re.compile(r"^(?:[\w.-]+/){0,2}(?P<name>[\w.-]+):(?P<sel>[\w.-]+)$")


class AuditError(Exception):
    """The audit cannot start (no such file, no lineage store): a usage error, exit 2."""


def label(rec: ArtifactRecord) -> str:
    return f"{rec.name}:v{rec.version}"


def md5_b64(path: Path) -> str:
    """A file's md5 as W&B's artifact manifests hold it (base64 of the raw digest)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


# --------------------------------------------------------------------------------------------- the report's types
#
# The audit's result is a JSON document (`--json` prints it as is, the renderers read it): typed here, key by key.


class Check(TypedDict):
    """One re-verified fact: a file's sha256, a record's consistency, or (online) W&B's copy."""

    kind: str  # query-file, artifact-file, raw-file, record, wandb
    artifact: str | None  # label, e.g. convnet:v0
    path: str | None
    status: str  # ok, or one of FAILED, or 'unreachable' (a raw file not on this machine: not a failure), or
    # 'deleted' (removed by `mnist-pipeline gc`, which recorded it: not a failure)
    expected: str | None
    actual: str | None
    detail: str


class FileEntry(TypedDict):
    relpath: str
    sha256: str
    size: int
    status: str
    actual: str | None


class ArtifactEntry(TypedDict):
    label: str
    name: str
    type: str
    version: int
    digest: str
    wandb_alias: str
    path: str
    role: str  # subject, upstream, downstream
    producer_run_id: str
    producers: list[str]
    consumers: list[str]
    created_at: str
    files: list[FileEntry]
    raw_files: list[dict[str, Any]]
    summary: dict[str, Any]
    aliases: list[dict[str, Any]]
    metadata: dict[str, Any]
    status: str  # ok, tampered, or deleted (by gc: its files are gone on purpose)
    deleted: NotRequired[dict[str, Any]]  # gc's deletion record (deleted_at, deleted_by, reason, bytes)


class WandbEntry(TypedDict):
    mode: str | None
    run_id: str
    url: str | None
    dir: str | None
    project: str | None
    entity: str | None
    synced_at: str | None
    inputs_declared: list[str]


class RunEntry(TypedDict, total=False):
    run_id: str
    job_type: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    flow_run_id: str | None
    group: str | None
    code: dict[str, Any]
    python: str | None
    platform: str | None
    seed: int | None
    packages: dict[str, Any]
    config: dict[str, Any]
    config_section: str | None
    summary: dict[str, Any]
    wandb: WandbEntry
    used: list[str]
    produced: list[str]
    role: str  # upstream or downstream


class AuditReport(TypedDict, total=False):
    schema: int
    query: str
    query_kind: str
    query_path: str | None
    query_sha256: str | None
    identified_by: str | None
    lineage_db: str
    subjects: list[str]
    artifacts: dict[str, ArtifactEntry]  # by label
    runs: dict[str, RunEntry]  # by run id
    upstream: list[dict[str, Any]]  # nested: artifact -> produced_by runs -> used artifacts -> ...
    downstream: list[dict[str, Any]]
    promotions: list[dict[str, Any]]  # PromotionRecord fields + artifact label and role
    checks: list[Check]
    failures: list[Check]
    edges: list[list[str]]  # ["artifact:<label>", "run:<id>"] pairs, in the direction of the data
    near_misses: list[dict[str, Any]]
    wandb_online: dict[str, dict[str, Any]]
    status: str  # verified, tampered, unknown
    exit_code: int
    message: str
    report: str


# --------------------------------------------------------------------------------------------- identification


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
        base = Path(rec.path)
        if path == base or base in path.parents:
            return rec, path.relative_to(base).as_posix()
    return None


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
        matches = store.artifacts_with_file(sha)
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


def _near_misses(store: LineageStore, path: Path) -> list[dict]:
    """Recorded files with the same name (and, first, the same size): a hint for a copy that was altered."""
    size = path.stat().st_size
    out = []
    for rec in store.artifacts():
        for f in rec.files:
            if Path(f.relpath).name == path.name:
                out.append({"artifact": label(rec), "relpath": f.relpath, "sha256": f.sha256, "size": f.size,
                            "same_size": f.size == size})
    return sorted(out, key=lambda d: not d["same_size"])[:5]


# --------------------------------------------------------------------------------------------- the walk


class _Walk:
    def __init__(self, store: LineageStore):
        self.store = store
        self.arts: dict[int, ArtifactRecord] = {}
        self.roles: dict[int, str] = {}
        self.runs: dict[str, dict] = {}
        self.used: dict[str, list[ArtifactRecord]] = {}
        self.produced: dict[str, list[ArtifactRecord]] = {}
        self.upstream_runs: list[str] = []
        self.downstream_runs: list[str] = []

    def _run(self, run_id: str) -> dict:
        if run_id not in self.runs:
            rec = self.store.run(run_id)
            self.runs[run_id] = asdict(rec) if rec else {"run_id": run_id, "job_type": "?", "status": "missing"}
            edges = self.store.edges(run_id)
            self.used[run_id], self.produced[run_id] = edges["used"], edges["produced"]
        return self.runs[run_id]

    def _add(self, rec: ArtifactRecord, role: str) -> None:
        self.arts.setdefault(rec.artifact_id, rec)
        self.roles.setdefault(rec.artifact_id, role)

    def upstream(self, rec: ArtifactRecord, seen: set, role: str = "upstream") -> dict:
        """The nested tree artifact -> producing runs -> their inputs -> ..., each node expanded once."""
        self._add(rec, role)
        node: dict[str, Any] = {"artifact": label(rec), "produced_by": []}
        if ("a", rec.artifact_id) in seen:
            node["repeat"] = True
            return node
        seen.add(("a", rec.artifact_id))
        producers = self.store.producers(rec.artifact_id) or [rec.producer_run_id]
        for run_id in producers:
            self._run(run_id)
            rnode: dict[str, Any] = {"run": run_id, "used": []}
            if ("r", run_id) in seen:
                rnode["repeat"] = True
            else:
                seen.add(("r", run_id))
                if run_id not in self.upstream_runs:
                    self.upstream_runs.append(run_id)
                rnode["used"] = [self.upstream(u, seen) for u in self.used[run_id]]
            node["produced_by"].append(rnode)
        return node

    def downstream(self, subjects: set[int]) -> None:
        """Runs that consumed only what is already in the picture (the subject, its ancestors and what was made
        from them): evaluations, ONNX validations. A run that merely shares the raw dataset (another training)
        is not about this model, nor is one that made a sibling version of an artifact in the chain."""
        closure = set(self.arts)
        chain_names = {a.name: a.artifact_id for a in self.arts.values()}
        sources = {aid for aid in closure
                   if all(not self.used[r] for r in self.store.producers(aid) if r in self.used)}
        changed = True
        while changed:
            changed = False
            candidates = []
            for aid in sorted(closure):
                for run_id in self.store.consumers(aid):
                    if run_id not in self.upstream_runs and run_id not in self.downstream_runs \
                            and run_id not in candidates:
                        candidates.append(run_id)
            for run_id in candidates:
                self._run(run_id)
                used_ids = {u.artifact_id for u in self.used[run_id]}
                if not used_ids <= closure:
                    continue
                if not any(a in subjects or a not in sources for a in used_ids):
                    continue
                if any(p.name in chain_names and p.artifact_id != chain_names[p.name]
                       for p in self.produced[run_id]):
                    continue
                self.downstream_runs.append(run_id)
                for p in self.produced[run_id]:
                    self._add(p, "downstream")
                    closure.add(p.artifact_id)
                changed = True


# --------------------------------------------------------------------------------------------- verification


class _Verifier:
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
        c: Check = {"kind": kind, "artifact": artifact, "path": path, "status": status, "expected": expected,
             "actual": actual, "detail": detail}
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

    def artifact(self, rec: ArtifactRecord, runs: dict, used: dict) -> None:
        lab = label(rec)
        base = Path(rec.path)
        gone = self.deleted.get(rec.artifact_id)
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
        if base.name != rec.digest[:16]:
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
                self.file("raw-file", label(rec), Path(raw["stored"]), raw["stored_sha256"], required=False)
                continue
            path = Path(raw["origin"]) if raw.get("origin") else (Path(location) / raw["name"] if location else None)
            if path is None:
                continue
            self.file("raw-file", label(rec), path, raw["sha256"], required=False)


# --------------------------------------------------------------------------------------------- the report


def _summary(rec: ArtifactRecord) -> dict:
    """The scalar facts of an artifact's metadata (lists only when short), for the tree."""
    skip = {"inputs", "files", "producer", "raw_files", "notes", "confusion_matrix", "mirrors", "train"}
    out: dict[str, Any] = {}
    for k, v in rec.metadata.items():
        if k in skip or v is None:
            continue
        if isinstance(v, (str, int, float, bool)) or isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (int, float, str)) for x in v) or isinstance(v, dict) and len(json.dumps(v, default=str)) <= 200:
            out[k] = v
    return out




def _run_entry(run: dict, used: list, produced: list, sync_rows: list[dict]) -> RunEntry:
    env = run.get("env") or {}
    cfg = run.get("config") or {}
    upload = next((r for r in sync_rows if r["action"] == "upload"), None)
    return {
        "run_id": run["run_id"], "job_type": run.get("job_type"), "status": run.get("status"),
        "started_at": run.get("started_at"), "finished_at": run.get("finished_at"), "error": run.get("error"),
        "flow_run_id": run.get("flow_run_id") or env.get("flow_run_id"), "group": run.get("run_group"),
        "code": {"git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty"),
                 "source_dir": env.get("source_dir")},
        "python": env.get("python"), "platform": env.get("platform"), "seed": env.get("seed"),
        "packages": env.get("packages") or {},
        "config": cfg, "config_section": CONFIG_SECTION.get(run.get("job_type") or ""),
        "summary": run.get("summary") or {},
        "wandb": {"mode": run.get("wandb_mode"), "run_id": run["run_id"],
                  "url": run.get("wandb_url") or (upload["detail"] if upload and upload["detail"] and
                                                  upload["detail"].startswith("http") else None),
                  "dir": run.get("wandb_dir"), "project": run.get("wandb_project"), "entity": run.get("wandb_entity"),
                  "synced_at": upload["done_at"] if upload else None,
                  "inputs_declared": [r["ref"] for r in sync_rows if r["action"] == "use"]},
        "used": [label(a) for a in used], "produced": [label(a) for a in produced],
    }


def _graph_edges(w: _Walk) -> list[list[str]]:
    edges = []
    for run_id in w.upstream_runs + w.downstream_runs:
        for u in w.used.get(run_id, []):
            if u.artifact_id in w.arts:
                edges.append([f"artifact:{label(u)}", f"run:{run_id}"])
        for p in w.produced.get(run_id, []):
            if p.artifact_id in w.arts:
                edges.append([f"run:{run_id}", f"artifact:{label(p)}"])
    return edges


def audit(store: LineageStore, target: str, *, check_raw_files: bool = True) -> AuditReport:
    """The whole audit of `target` as one JSON-ready dict; `report["exit_code"]` is the CLI's exit code."""
    ident = identify(store, target)
    report: AuditReport = {
        "schema": 1, "query": target, "query_kind": ident.kind, "query_path": str(ident.path) if ident.path else None,
        "query_sha256": ident.sha256 if ident.kind == "file" else None, "identified_by": ident.how,
        "lineage_db": str(store.path), "subjects": [], "artifacts": {}, "runs": {}, "upstream": [],
        "downstream": [], "promotions": [], "checks": [], "failures": [], "edges": [],
    }
    if not ident.matches:
        if ident.kind == "ref":
            message = f"{target}: no such artifact version in the lineage store {store.path}"
        else:
            what = f"file sha256 {ident.sha256}" if ident.kind == "file" else f"folder digest {ident.sha256}"
            message = (f"{target}: not produced by any recorded run ({what} is in no artifact of the lineage "
                       f"store {store.path})")
        _conclude(report, "unknown", EXIT_UNKNOWN, message)
        if ident.kind == "file" and ident.path is not None:
            report["near_misses"] = _near_misses(store, ident.path)
        return report

    w = _Walk(store)
    seen: set = set()
    for rec in ident.matches:
        report["subjects"].append(label(rec))
        report["upstream"].append(w.upstream(rec, seen, role="subject"))
        w.roles[rec.artifact_id] = "subject"
    w.downstream({r.artifact_id for r in ident.matches})

    deleted = store.deletions()
    v = _Verifier(deleted)
    if ident.kind == "file" and ident.how == "sha256":
        subj = ident.matches[0]
        v.add("query-file", label(subj), str(ident.path), "ok", ident.sha256, ident.sha256,
              f"same content as {label(subj)}/{ident.relpath}")
    for rec in w.arts.values():
        v.artifact(rec, w.runs, w.used)
        if check_raw_files:
            v.raw_files(rec)
    # the queried file was named: make sure it is checked
    if ident.kind == "file" and ident.how == "location" and not any(c["path"] == str(ident.path) for c in v.checks):
        v.add("query-file", label(ident.matches[0]), str(ident.path), "unrecorded", None, ident.sha256,
              "in an artifact folder but not on record")

    by_label: dict[str, ArtifactEntry] = {}
    for aid, rec in sorted(w.arts.items()):
        lab = label(rec)
        checks = [c for c in v.checks if c["artifact"] == lab]
        files: list[FileEntry] = []
        for f in rec.files:
            where = str(Path(rec.path) / f.relpath)
            c = next((c for c in checks if c["kind"] == "artifact-file" and c["path"] == where), None)
            files.append({"relpath": f.relpath, "sha256": f.sha256, "size": f.size,
                          "status": c["status"] if c else "unchecked", "actual": c["actual"] if c else None})
        raw = []
        for r in rec.metadata.get("raw_files", []):
            c = next((c for c in checks if c["kind"] == "raw-file" and (
                c["path"] == r["stored"] if r.get("stored") else Path(c["path"] or "").name == r["name"])), None)
            raw.append({**r, "path": c["path"] if c else None, "status": c["status"] if c else "unchecked"})
        by_label[lab] = {
            "label": lab, "name": rec.name, "type": rec.type, "version": rec.version, "digest": rec.digest,
            "wandb_alias": digest_alias(rec.digest), "path": rec.path, "role": w.roles[aid],
            "producer_run_id": rec.producer_run_id, "producers": store.producers(aid),
            "consumers": store.consumers(aid), "created_at": rec.created_at, "files": files, "raw_files": raw,
            "summary": _summary(rec), "aliases": store.aliases_of(aid), "metadata": rec.metadata,
            "status": "tampered" if any(c["status"] in FAILED for c in checks) else
                      "deleted" if any(c["status"] == "deleted" for c in checks) else "ok",
        }
        if aid in deleted:
            by_label[lab]["deleted"] = asdict(deleted[aid])
    report["artifacts"] = by_label
    for run_id in w.upstream_runs + w.downstream_runs:
        report["runs"][run_id] = _run_entry(w.runs[run_id], w.used[run_id], w.produced[run_id],
                                            store.sync_log(run_id))
        report["runs"][run_id]["role"] = "upstream" if run_id in w.upstream_runs else "downstream"
    report["downstream"] = [{"run": r, "job_type": w.runs[r].get("job_type"), "status": w.runs[r].get("status"),
                             "used": [label(a) for a in w.used[r]], "produced": [label(a) for a in w.produced[r]]}
                            for r in w.downstream_runs]
    for aid in sorted(w.arts):
        for p in store.promotions(aid):
            report["promotions"].append({**asdict(p), "artifact": label(w.arts[aid]), "role": "decision about it"})
    # decisions where one of these models was the production model compared against
    for p in store.promotions(production_artifact_ids=list(w.arts)):
        if p.production_artifact_id is None or p.artifact_id == p.production_artifact_id:
            continue
        report["promotions"].append({**asdict(p), "artifact": label(store.artifact(p.artifact_id)),
                                     "role": f"compared against {label(w.arts[p.production_artifact_id])}"})
    report["checks"] = v.checks
    report["edges"] = _graph_edges(w)
    _finish(report)
    return report


def _conclude(report: AuditReport, status: str, exit_code: int, message: str) -> None:
    report["status"], report["exit_code"], report["message"] = status, exit_code, message


def _finish(report: AuditReport) -> None:
    """Set status, exit code and message from the checks."""
    failures = [c for c in report["checks"] if c["status"] in FAILED]
    report["failures"] = failures
    subjects = ", ".join(report["subjects"])
    if failures:
        first = failures[0]
        _conclude(report, "tampered", EXIT_TAMPERED,
                  f"TAMPERED: {first['path']}: {first['detail'] or first['status']}"
                  + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    else:
        n = sum(1 for c in report["checks"] if c["status"] == "ok")
        gone = sorted({c["artifact"] for c in report["checks"] if c["status"] == "deleted" and c["artifact"]})
        tail = f"; {', '.join(gone)} deleted by gc (on record, files removed)" if gone else ""
        _conclude(report, "verified", EXIT_VERIFIED, f"VERIFIED: {subjects}: {n} digests re-checked, all match{tail}")


def apply_wandb_findings(report: AuditReport, found: dict[str, dict | None]) -> AuditReport:
    """Fold what W&B says about each artifact (from `sync.wandb_findings`) into the report.

    `found[label]` is None when W&B has no such version (an offline run not synced yet: noted, not a failure),
    else {"ref", "version", "aliases", "logged_by", "used_by", "files": {relpath: md5 base64}}. W&B holding
    other content for the same sha256 alias, or naming another producing run, is a mismatch."""
    online = {}
    for lab, info in found.items():
        art = report["artifacts"][lab]
        entry: dict[str, Any] = {"found": info is not None}
        if info is None:
            entry["note"] = "not in W&B (offline run not synced yet: `mnist-pipeline sync`)"
            online[lab] = entry
            continue
        entry.update({k: info.get(k) for k in ("ref", "version", "aliases", "logged_by", "used_by")})
        producers = set(art["producers"])
        if info.get("logged_by") and info["logged_by"] not in producers:
            report["checks"].append({"kind": "wandb", "artifact": lab, "path": info.get("ref"), "status": "mismatch",
                                     "expected": ", ".join(sorted(producers)), "actual": info["logged_by"],
                                     "detail": f"W&B says it was logged by run {info['logged_by']}, the lineage "
                                               f"store by {', '.join(sorted(producers))}"})
        for f in art["files"]:
            remote = (info.get("files") or {}).get(f["relpath"])
            local = Path(art["path"]) / f["relpath"]
            if remote is None or not local.is_file():
                continue
            mine = md5_b64(local)
            ok = remote == mine
            report["checks"].append({"kind": "wandb", "artifact": lab, "path": str(local),
                                     "status": "ok" if ok else "mismatch", "expected": remote, "actual": mine,
                                     "detail": "" if ok else f"md5 {mine} differs from W&B's copy "
                                               f"{info.get('ref')} ({remote})"})
        missing = [r for r in art["consumers"] if r in report["runs"]
                   and report["runs"][r]["wandb"]["synced_at"] is not None and r not in (info.get("used_by") or [])]
        if missing:
            entry["missing_input_edges"] = missing
        online[lab] = entry
    report["wandb_online"] = online
    _finish(report)
    return report
