"""Provenance audit: which data, code and settings made a file, and is every one of them still intact?

`audit(store, target)` identifies a file (by its sha256, or by its place in the artifact folders), a directory
or an artifact reference (`convnet-onnx:v0`, `convnet:production`, `convnet:sha256-0123abcd...`) in the lineage
store, walks the lineage back to the data (producing runs, their inputs, recursively) and forward (evaluations,
onnxruntime validation, promotion decisions), and re-hashes every file it can reach. The result is one plain dict
(the `--json` output); `render_tree`, `render_mermaid`, `render_markdown`, `render_svg` and `render_html` draw it.

Pure: it reads the store and the files on disk; no Prefect, no wandb. The W&B cross-check of `audit --online`
happens in `sync.py` through the W&B boundary (`wandb_io.py`) and comes back here as plain data (`apply_wandb_findings`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline.lineage.refs import manifest, manifest_digest, sha256_file
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
            self.runs[run_id] = self.store.run(run_id) or {"run_id": run_id, "job_type": "?", "status": "missing"}
            edges = self.store.edges(run_id)
            self.used[run_id], self.produced[run_id] = edges["used"], edges["produced"]
        return self.runs[run_id]

    def _add(self, rec: ArtifactRecord, role: str) -> None:
        self.arts.setdefault(rec.artifact_id, rec)
        self.roles.setdefault(rec.artifact_id, role)

    def upstream(self, rec: ArtifactRecord, seen: set, role: str = "upstream") -> dict:
        """The nested tree artifact -> producing runs -> their inputs -> ..., each node expanded once."""
        self._add(rec, role)
        node = {"artifact": label(rec), "produced_by": []}
        if ("a", rec.artifact_id) in seen:
            node["repeat"] = True
            return node
        seen.add(("a", rec.artifact_id))
        producers = self.store.producers(rec.artifact_id) or [rec.producer_run_id]
        for run_id in producers:
            self._run(run_id)
            rnode = {"run": run_id, "used": []}
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
    def __init__(self):
        self.cache: dict[Path, str | None] = {}
        self.checks: list[dict] = []

    def _sha(self, path: Path) -> str | None:
        if path not in self.cache:
            try:
                self.cache[path] = sha256_file(path)
            except OSError:
                self.cache[path] = None
        return self.cache[path]

    def add(self, kind: str, artifact: str | None, path: str, status: str, expected: str | None = None,
            actual: str | None = None, detail: str = "") -> dict:
        c = {"kind": kind, "artifact": artifact, "path": path, "status": status, "expected": expected,
             "actual": actual, "detail": detail}
        self.checks.append(c)
        return c

    def file(self, kind: str, artifact: str | None, path: Path, expected: str, *, required: bool) -> dict:
        if not path.is_file():
            return self.add(kind, artifact, str(path), "missing" if required else "unreachable", expected,
                            detail="missing (recorded sha256 {})".format(expected) if required
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
        for f in rec.files:
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
            path = Path(raw["origin"]) if raw.get("origin") else (Path(location) / raw["name"] if location else None)
            if path is None:
                continue
            self.file("raw-file", label(rec), path, raw["sha256"], required=False)


# --------------------------------------------------------------------------------------------- the report


def _summary(rec: ArtifactRecord) -> dict:
    """The scalar facts of an artifact's metadata (lists only when short), for the tree."""
    skip = {"inputs", "files", "producer", "raw_files", "notes", "confusion_matrix", "mirrors", "train"}
    out = {}
    for k, v in rec.metadata.items():
        if k in skip or v is None:
            continue
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
        elif isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (int, float, str)) for x in v):
            out[k] = v
        elif isinstance(v, dict) and len(json.dumps(v, default=str)) <= 200:
            out[k] = v
    return out


def _aliases(store: LineageStore, artifact_id: int) -> list[dict]:
    with store.reader() as con:
        return [dict(r) for r in con.execute("SELECT alias, set_at FROM aliases WHERE artifact_id = ?"
                                             " ORDER BY alias", (artifact_id,))]


def _run_entry(run: dict, used: list, produced: list, sync_rows: list[dict]) -> dict:
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
        "config": cfg, "config_section": CONFIG_SECTION.get(run.get("job_type"), None),
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


def audit(store: LineageStore, target: str, *, check_raw_files: bool = True) -> dict:
    """The whole audit of `target` as one JSON-ready dict; `report["exit_code"]` is the CLI's exit code."""
    ident = identify(store, target)
    report: dict = {
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
        report.update(status="unknown", exit_code=EXIT_UNKNOWN, message=message)
        if ident.kind == "file":
            report["near_misses"] = _near_misses(store, ident.path)
        return report

    w = _Walk(store)
    seen: set = set()
    for rec in ident.matches:
        report["subjects"].append(label(rec))
        report["upstream"].append(w.upstream(rec, seen, role="subject"))
        w.roles[rec.artifact_id] = "subject"
    w.downstream({r.artifact_id for r in ident.matches})

    v = _Verifier()
    if ident.kind == "file" and ident.how == "sha256":
        subj = ident.matches[0]
        v.add("query-file", label(subj), str(ident.path), "ok", ident.sha256, ident.sha256,
              f"same content as {label(subj)}/{ident.relpath}")
    for rec in w.arts.values():
        v.artifact(rec, w.runs, w.used)
        if check_raw_files:
            v.raw_files(rec)
    if ident.kind == "file" and ident.how == "location":  # the queried file was named; make sure it is checked
        if not any(c["path"] == str(ident.path) for c in v.checks):
            v.add("query-file", label(ident.matches[0]), str(ident.path), "unrecorded", None, ident.sha256,
                  "in an artifact folder but not on record")

    by_label = {}
    for aid, rec in sorted(w.arts.items()):
        lab = label(rec)
        checks = [c for c in v.checks if c["artifact"] == lab]
        files = []
        for f in rec.files:
            where = str(Path(rec.path) / f.relpath)
            c = next((c for c in checks if c["kind"] == "artifact-file" and c["path"] == where), None)
            files.append({"relpath": f.relpath, "sha256": f.sha256, "size": f.size,
                          "status": c["status"] if c else "unchecked", "actual": c["actual"] if c else None})
        raw = []
        for r in rec.metadata.get("raw_files", []):
            c = next((c for c in checks if c["kind"] == "raw-file" and Path(c["path"]).name == r["name"]), None)
            raw.append({**r, "path": c["path"] if c else None, "status": c["status"] if c else "unchecked"})
        by_label[lab] = {
            "label": lab, "name": rec.name, "type": rec.type, "version": rec.version, "digest": rec.digest,
            "wandb_alias": f"sha256-{rec.digest[:16]}", "path": rec.path, "role": w.roles[aid],
            "producer_run_id": rec.producer_run_id, "producers": store.producers(aid),
            "consumers": store.consumers(aid), "created_at": rec.created_at, "files": files, "raw_files": raw,
            "summary": _summary(rec), "aliases": _aliases(store, aid), "metadata": rec.metadata,
            "status": "tampered" if any(c["status"] in FAILED for c in checks) else "ok",
        }
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
            report["promotions"].append({**p, "artifact": label(w.arts[aid]), "role": "decision about it"})
    with store.reader() as con:  # decisions where one of these models was the production model compared against
        ids = tuple(w.arts)
        rows = con.execute(f"SELECT * FROM promotions WHERE production_artifact_id IN ({','.join('?' * len(ids))})"
                           " AND artifact_id != production_artifact_id ORDER BY promotion_id", ids).fetchall()
    for r in rows:
        cand = store.artifact(r["artifact_id"])
        report["promotions"].append({**dict(r), "artifact": label(cand),
                                     "role": f"compared against {label(w.arts[r['production_artifact_id']])}"})
    report["checks"] = v.checks
    report["edges"] = _graph_edges(w)
    _finish(report)
    return report


def _finish(report: dict) -> None:
    """Set status, exit code and message from the checks."""
    failures = [c for c in report["checks"] if c["status"] in FAILED]
    report["failures"] = failures
    subjects = ", ".join(report["subjects"])
    if failures:
        first = failures[0]
        report.update(status="tampered", exit_code=EXIT_TAMPERED,
                      message=f"TAMPERED: {first['path']}: {first['detail'] or first['status']}"
                              + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    else:
        n = sum(1 for c in report["checks"] if c["status"] == "ok")
        report.update(status="verified", exit_code=EXIT_VERIFIED,
                      message=f"VERIFIED: {subjects}: {n} digests re-checked, all match")


def apply_wandb_findings(report: dict, found: dict[str, dict | None]) -> dict:
    """Fold what W&B says about each artifact (from `sync.wandb_findings`) into the report.

    `found[label]` is None when W&B has no such version (an offline run not synced yet: noted, not a failure),
    else {"ref", "version", "aliases", "logged_by", "used_by", "files": {relpath: md5 base64}}. W&B holding
    other content for the same sha256 alias, or naming another producing run, is a mismatch."""
    online = {}
    for lab, info in found.items():
        art = report["artifacts"][lab]
        entry = {"found": info is not None}
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


# --------------------------------------------------------------------------------------------- rendering


def _short(d: str | None, n: int = 16) -> str:
    return (d or "?")[:n]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _run_title(run: dict) -> str:
    when = run.get("finished_at") or run.get("started_at") or ""
    return f"{run['job_type']} run {run['run_id']} ({run['status']} {when})"


def _run_details(run: dict) -> list[str]:
    out = []
    wb = run["wandb"]
    if wb["url"]:
        out.append(f"W&B run {wb['run_id']}: {wb['url']}")
    else:
        synced = f", synced {wb['synced_at']}" if wb["synced_at"] else ", not synced yet"
        out.append(f"W&B run {wb['run_id']} ({wb['mode']}{synced}): {wb['dir']}")
    out.append(f"Prefect flow run {run['flow_run_id'] or '-'}")
    code = run["code"]
    dirty = {True: "dirty: uncommitted changes", False: "clean", None: "unknown"}[code["git_dirty"]]
    out.append(f"code git {code['git_commit'] or '(not a git checkout)'} ({dirty}); python {run['python']}; "
               f"seed {run['seed']}")
    pk = run["packages"]
    if pk:
        out.append("packages " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items()) if v))
    section = run["config_section"]
    if section and isinstance(run["config"].get(section), dict):
        out.append(f"config {section}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in run["config"][section].items()))
    if run.get("error"):
        out.append(f"error: {run['error']}")
    return out


def _artifact_title(art: dict) -> str:
    bad = [f["relpath"] for f in art["files"] if f["status"] in FAILED]
    state = f"TAMPERED: {', '.join(bad)}" if bad else ("TAMPERED" if art["status"] == "tampered" else
                                                       f"{len(art['files'])} file(s) ok")
    return f"{art['label']} ({art['type']}) sha256 {_short(art['digest'])}  [{state}]"


def _artifact_details(art: dict, report: dict) -> list[str]:
    out = []
    s = art["summary"]
    if art["type"] == "dataset":
        m = art["metadata"]
        out.append(f"source {m.get('source')} ({m.get('source_location')}), slice {m.get('slice')}; "
                   f"sizes {_fmt(m.get('sizes'))}")
        for split, counts in (m.get("class_counts") or {}).items():
            out.append(f"class counts {split} {_fmt(counts)}")
        for r in art["raw_files"]:
            out.append(f"raw {r['name']} sha256 {_short(r['sha256'])} {r['size']} B  {r['status']}")
    elif s:
        out.append(", ".join(f"{k} {_fmt(v)}" for k, v in s.items()))
    for f in art["files"]:
        extra = f" (now {_short(f['actual'])})" if f["status"] == "mismatch" else ""
        out.append(f"file {f['relpath']} sha256 {_short(f['sha256'])} {f['size']} B  {f['status']}{extra}")
    shown = {str(Path(art["path"]) / f["relpath"]) for f in art["files"]}
    for c in report["checks"]:
        if c["artifact"] == art["label"] and c["status"] in FAILED and not (
                c["kind"] == "artifact-file" and c["path"] in shown):
            out.append(f"{c['status'].upper()}: {c['path']}: {c['detail']}")
    if art["aliases"]:
        out.append("aliases " + ", ".join(f"{a['alias']} (since {a['set_at']})" for a in art["aliases"]))
    out.append(f"path {art['path']}")
    return out


def _tree_node(node: dict, report: dict, prefix_title: str = "") -> tuple[str, list[str], list]:
    if "artifact" in node:
        art = report["artifacts"][node["artifact"]]
        if node.get("repeat"):
            return f"{prefix_title}{art['label']} (see above)", [], []
        children = [_tree_node(r, report, "produced by ") for r in node["produced_by"]]
        return prefix_title + _artifact_title(art), _artifact_details(art, report), children
    run = report["runs"][node["run"]]
    if node.get("repeat"):
        return f"{prefix_title}{run['job_type']} run {run['run_id']} (see above)", [], []
    children = [_tree_node(a, report, "used ") for a in node["used"]]
    return prefix_title + _run_title(run), _run_details(run), children


def _draw(node: tuple, prefix: str, last: bool, root: bool, out: list[str]) -> None:
    title, details, children = node
    out.append(prefix + ("" if root else ("└─ " if last else "├─ ")) + title)
    inner = prefix + ("" if root else ("   " if last else "│  "))
    for d in details:
        out.append(inner + ("│  " if children else "   ") + d)
    for i, c in enumerate(children):
        _draw(c, inner, i == len(children) - 1, False, out)


def tree_chain(node: dict) -> list[str]:
    """The upstream tree's node names in drawing order (`artifact:<label>` / `run:<id>`), for comparing outputs."""
    if "artifact" in node:
        return [f"artifact:{node['artifact']}"] + [x for r in node["produced_by"] for x in tree_chain(r)]
    return [f"run:{node['run']}"] + [x for a in node["used"] for x in tree_chain(a)]


def render_tree(report: dict) -> str:
    out = [f"Audit of {report['query_path'] or report['query']}"]
    if report["query_sha256"]:
        out.append(f"  sha256 {report['query_sha256']}")
    out.append(f"  lineage store {report['lineage_db']}")
    if report["status"] == "unknown":
        out += ["", f"UNKNOWN: {report['message']}"]
        for n in report.get("near_misses") or []:
            same = "same name and size" if n["same_size"] else "same name"
            out.append(f"  ({same} as {n['artifact']}/{n['relpath']}, recorded sha256 {_short(n['sha256'])}: "
                       "this file differs from it)")
        return "\n".join(out) + "\n"
    out.append(f"  identified as {', '.join(report['subjects'])} (by {report['identified_by']})")
    out += ["", "Lineage (back to the data)"]
    for node in report["upstream"]:
        _draw(_tree_node(node, report), "", True, True, out)
    out += ["", "Forward (what was measured and decided about it)"]
    if not report["downstream"]:
        out.append("  (no recorded run used it)")
    for d in report["downstream"]:
        run = report["runs"][d["run"]]
        produced = ", ".join(d["produced"]) or "no artifact"
        out.append(f"  {_run_title(run)}: used {', '.join(d['used'])} -> {produced}")
        for lab in d["produced"]:
            art = report["artifacts"][lab]
            out.append(f"    {_artifact_title(art)}")
            out += [f"      {line}" for line in _artifact_details(art, report)]
        if run.get("error"):
            out.append(f"    error: {run['error']}")
    out += ["", "Promotions"]
    if not report["promotions"]:
        out.append("  (no promotion decision recorded)")
    for p in report["promotions"]:
        applied = f"applied in W&B {p['wandb_applied_at']}" if p.get("wandb_applied_at") else "not in W&B yet"
        out.append(f"  {p['decided_at']} {p['artifact']} {p['decision'].upper()} ({p['role']}): {p['reason']}; "
                   f"validation {'passed' if p['validation_passed'] else 'failed'}; {applied}")
    if "wandb_online" in report:
        out += ["", "W&B (online)"]
        for lab, e in report["wandb_online"].items():
            if not e["found"]:
                out.append(f"  {lab}: {e['note']}")
            else:
                miss = f"; input edges missing in W&B: {', '.join(e['missing_input_edges'])}" \
                    if e.get("missing_input_edges") else ""
                out.append(f"  {lab}: {e['ref']} = W&B {e['version']} logged by {e['logged_by']}, used by "
                           f"{', '.join(e['used_by'] or []) or 'no run'}{miss}")
    checks = report["checks"]
    counts: dict[str, dict[str, int]] = {}
    for c in checks:
        counts.setdefault(c["kind"], {}).setdefault(c["status"], 0)
        counts[c["kind"]][c["status"]] += 1
    out += ["", "Verification"]
    for kind, st in counts.items():
        out.append(f"  {kind}: " + ", ".join(f"{n} {s}" for s, n in sorted(st.items())))
    for c in report["failures"]:
        out.append(f"  {c['status'].upper()} {c['path']}: {c['detail']}")
    out += ["", report["message"]]
    return "\n".join(out) + "\n"


def _node_ids(report: dict) -> dict[str, str]:
    ids = {}
    for i, lab in enumerate(report["artifacts"]):
        ids[f"artifact:{lab}"] = f"a{i}"
    for i, run_id in enumerate(report["runs"]):
        ids[f"run:{run_id}"] = f"r{i}"
    return ids


def _node_text(report: dict, key: str) -> tuple[str, str]:
    kind, _, name = key.partition(":")
    if kind == "artifact":
        a = report["artifacts"][name]
        return a["label"], f"{a['type']} · {_short(a['digest'], 12)}"
    r = report["runs"][name]
    return r["job_type"], f"run {r['run_id']}"


def render_mermaid(report: dict) -> str:
    """A Mermaid flowchart of the lineage: artifact versions as slanted boxes, runs as rounded ones; the audited
    artifact in bold, anything that failed verification in red."""
    ids = _node_ids(report)
    lines = ["flowchart LR"]
    for key, nid in ids.items():
        top, sub = (html.escape(t, quote=True) for t in _node_text(report, key))
        text = f"{top}<br/>{sub}"
        lines.append(f'    {nid}[/"{text}"/]' if key.startswith("artifact:") else f'    {nid}("{text}")')
    for src, dst in report["edges"]:
        lines.append(f"    {ids[src]} --> {ids[dst]}")
    lines += ["    classDef subject stroke-width:4px,stroke:#1a5fb4",
              "    classDef tampered fill:#f8d0d0,stroke:#c01c28,stroke-width:3px",
              "    classDef run fill:#eeeeee,stroke:#777777"]
    runs = [ids[f"run:{r}"] for r in report["runs"]]
    if runs:
        lines.append(f"    class {','.join(runs)} run")
    subj = [ids[f"artifact:{s}"] for s in report["subjects"]]
    if subj:
        lines.append(f"    class {','.join(subj)} subject")
    bad = [ids[f"artifact:{lab}"] for lab, a in report["artifacts"].items() if a["status"] == "tampered"]
    if bad:
        lines.append(f"    class {','.join(bad)} tampered")
    return "\n".join(lines) + "\n"


def _layout(report: dict) -> dict[str, tuple[int, int]]:
    """Column = longest path from a root, row = order within the column."""
    nodes = list(_node_ids(report))
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in report["edges"]:
        preds[d].append(s)
    rank: dict[str, int] = {}

    def r(n: str, stack: frozenset = frozenset()) -> int:
        if n not in rank:
            rank[n] = 0 if not preds[n] or n in stack else 1 + max(r(p, stack | {n}) for p in preds[n])
        return rank[n]

    rows: dict[int, int] = {}
    pos = {}
    for n in nodes:
        c = r(n)
        pos[n] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    return pos


def render_svg(report: dict) -> str:
    """The lineage graph as a self-contained SVG (no script, no network): open it in any browser."""
    pos = _layout(report)
    w_box, h_box, dx, dy, pad = 210, 46, 260, 76, 20
    cols = max((c for c, _ in pos.values()), default=0) + 1
    rows = max((r for _, r in pos.values()), default=0) + 1
    long_edges = [e for e in report["edges"] if pos[e[1]][0] - pos[e[0]][0] > 1]
    lanes_top = pad + (rows - 1) * dy + h_box + 18  # edges that skip columns run below the boxes
    width = pad * 2 + (cols - 1) * dx + w_box
    height = lanes_top + 10 * len(long_edges) + 34
    subj = {f"artifact:{s}" for s in report["subjects"]}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f"<title>Lineage of {html.escape(', '.join(report['subjects']))}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']

    def xy(n):
        c, r = pos[n]
        return pad + c * dx, pad + r * dy

    for s, d in report["edges"]:
        (x1, y1), (x2, y2) = xy(s), xy(d)
        if [s, d] in long_edges:
            lane = lanes_top + 10 * long_edges.index([s, d])
            out.append(f'<path d="M {x1 + w_box / 2} {y1 + h_box} L {x1 + w_box / 2} {lane} L {x2 + w_box / 2} '
                       f'{lane} L {x2 + w_box / 2} {y2 + h_box}" fill="none" stroke="#888" stroke-dasharray="4 3" '
                       'marker-end="url(#arrow)"/>')
            continue
        out.append(f'<path d="M {x1 + w_box} {y1 + h_box / 2} C {x1 + w_box + 25} {y1 + h_box / 2}, '
                   f'{x2 - 25} {y2 + h_box / 2}, {x2} {y2 + h_box / 2}" fill="none" stroke="#555" '
                   'marker-end="url(#arrow)"/>')
    for n in pos:
        x, y = xy(n)
        top, sub = _node_text(report, n)
        is_art = n.startswith("artifact:")
        bad = is_art and report["artifacts"][n.split(":", 1)[1]]["status"] == "tampered"
        fill = "#f8d0d0" if bad else ("#dbe8f7" if is_art else "#eeeeee")
        stroke = "#c01c28" if bad else ("#1a5fb4" if n in subj else "#777777")
        sw = 3 if (bad or n in subj) else 1
        rx = 4 if is_art else 16
        out.append(f'<g><rect x="{x}" y="{y}" width="{w_box}" height="{h_box}" rx="{rx}" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="{sw}"/>'
                   f'<text x="{x + w_box / 2}" y="{y + 19}" text-anchor="middle" font-weight="bold">'
                   f"{html.escape(top)}</text>"
                   f'<text x="{x + w_box / 2}" y="{y + 36}" text-anchor="middle">{html.escape(sub)}</text></g>')
    verdict_color = {"verified": "#26a269", "tampered": "#c01c28"}.get(report["status"], "#555")
    out.append(f'<text x="{pad}" y="{height - 10}" fill="{verdict_color}" font-weight="bold">'
               f"{html.escape(report['message'])}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _check_rows(report: dict) -> list[tuple]:
    return [(c["status"], c["kind"], c["artifact"] or "", c["path"], c["detail"]) for c in report["checks"]]


def render_markdown(report: dict) -> str:
    out = [f"# Provenance audit: {', '.join(report['subjects']) or report['query']}", "",
           f"**{report['message']}** (exit {report['exit_code']})", ""]
    if report["status"] != "unknown":
        out += ["## Lineage graph", "", "```mermaid", render_mermaid(report).rstrip(), "```", ""]
    out += ["## Audit", "", "```text", render_tree(report).rstrip(), "```", ""]
    if report["checks"]:
        out += ["## Digests re-checked", "", "| status | kind | artifact | file | detail |", "|---|---|---|---|---|"]
        out += [f"| {s} | {k} | {a} | `{p}` | {d.replace('|', '/')} |" for s, k, a, p, d in _check_rows(report)]
    return "\n".join(out) + "\n"


def render_html(report: dict) -> str:
    """One self-contained HTML page: the SVG graph, the tree and the table of re-checked digests."""
    title = html.escape(f"Provenance audit: {', '.join(report['subjects']) or report['query']}")
    color = {"verified": "#26a269", "tampered": "#c01c28"}.get(report["status"], "#555")
    rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(k)}</td><td>{html.escape(a)}</td>"
                   f"<td><code>{html.escape(p)}</code></td><td>{html.escape(d)}</td></tr>"
                   for s, k, a, p, d in _check_rows(report))
    graph = render_svg(report) if report["status"] != "unknown" else ""
    mermaid = (f"<details><summary>Mermaid source</summary><pre>{html.escape(render_mermaid(report))}</pre>"
               "</details>") if report["status"] != "unknown" else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>"
            "body{font-family:sans-serif;margin:2em} pre{background:#f6f6f6;padding:1em;overflow:auto}"
            "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
            f"</style></head><body>\n<h1>{title}</h1>\n"
            f"<p style=\"color:{color};font-weight:bold\">{html.escape(report['message'])} "
            f"(exit {report['exit_code']})</p>\n{graph}{mermaid}\n"
            f"<h2>Audit</h2>\n<pre>{html.escape(render_tree(report))}</pre>\n"
            "<h2>Digests re-checked</h2>\n<table><tr><th>status</th><th>kind</th><th>artifact</th><th>file</th>"
            f"<th>detail</th></tr>{rows}</table>\n</body></html>\n")


def write_report(report: dict, path: Path) -> Path:
    """`.md` (Mermaid + tree), `.html` (SVG + tree, self-contained) or `.svg` (the graph alone)."""
    path = Path(path)
    renderers = {".md": render_markdown, ".markdown": render_markdown, ".html": render_html, ".htm": render_html,
                 ".svg": render_svg}
    if path.suffix.lower() not in renderers:
        raise AuditError(f"{path}: report must end in .md, .html or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(renderers[path.suffix.lower()](report), encoding="utf-8")
    return path
