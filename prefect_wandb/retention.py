"""Retention that respects lineage: what `gc` may remove, and why everything else stays.

Kept, always:
- every model an alias (`production`, `candidate`) points at, the model `rollback` would move production back to
  (`rollback.previous_production`: the production before the current one), and the newest `keep_last` models of
  each name;
- for each of those, everything it was made from (backwards: producing run, its inputs, recursively) and everything
  made from it (its ONNX export, metrics, validation) with their own ancestry, so `audit` of a kept model still
  verifies every file it reaches;
- everything a run still 'running' uses or produces, and every artifact of its flow run;
- everything a running flow holds (`holds.py`: its dataset, from the moment it resolved it);
- artifacts younger than `older_than_days`.
Removable: the other recorded artifact folders, artifact folders no record points at, staging folders of runs that
are no longer running, and training checkpoints when no training runs. With artifacts in S3 (`artifact_files`),
the recorded versions are S3 folders (removed with their cache copies), the folders no record points at include
uploads whose commit never came, and staging, checkpoints and cache copies are in the local cache. Pure: the plan reads the store and the disk;
`prefect_wandb.store` records what is then deleted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect_wandb.artifact_files import cache_root, is_remote, local_folder, remote_folders
from prefect_wandb.holds import held
from prefect_wandb.layout import CHECKPOINTS, STAGING, candidate_folders
from prefect_wandb.leftovers import abandoned, ended_here, owner, process_records, wandb_temp_left
from prefect_wandb.rollback import previous_production
from prefect_wandb.store import ALIASES, LineageStore


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # gone since the walk listed it
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@dataclass
class Removal:
    kind: str  # 'artifact', 'unrecorded-folder', 'unrecorded-upload', 'staging', 'wandb-temp', 'checkpoint'
    path: str
    bytes: int
    reason: str
    artifact: str | None = None  # name:vN for a recorded artifact
    artifact_id: int | None = None


@dataclass
class Plan:
    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # label -> why it stays
    already_deleted: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def to_dict(self) -> dict:
        return {"removals": [asdict(r) for r in self.removals], "bytes_freed": self.bytes, "kept": self.kept,
                "already_deleted": self.already_deleted}


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        d = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def protected(store: LineageStore, keep_last: int, deleted: AbstractSet[int] = frozenset()) -> dict[int, str]:
    """artifact_id -> why it is kept (alias, rollback target, newest-N, their ancestry and derivatives, in-flight
    runs)."""
    arts = {a.artifact_id: a for a in store.artifacts()}
    why: dict[int, str] = {}
    roots: dict[int, str] = {}
    names = sorted({a.name for a in arts.values() if a.type == "model"})
    for name in names:
        for alias in ALIASES:
            rec = store.alias(name, alias)
            if rec is not None:
                roots.setdefault(rec.artifact_id, f"{name}:{alias}")
        current, target = previous_production(store, name)  # what `rollback` goes back to must still verify
        if current is not None and target is not None and target.artifact_id not in deleted:
            roots.setdefault(target.artifact_id, f"rollback target of production {current.label}")
        models = sorted((a for a in arts.values() if a.name == name and a.artifact_id not in deleted),
                        key=lambda a: a.version, reverse=True)
        for m in models[:keep_last]:
            roots.setdefault(m.artifact_id, f"one of the newest {keep_last} {name} models")

    def backwards(aid: int, reason: str) -> None:
        stack = [aid]
        while stack:
            cur = stack.pop()
            if cur in why:
                continue
            why[cur] = reason if cur == aid else f"in the lineage of {arts[aid].label} ({reason})"
            for run_id in store.producers(cur):
                stack.extend(u.artifact_id for u in store.edges(run_id).used)

    def forwards(aid: int) -> list[int]:
        out, stack, seen = [], [aid], {aid}
        while stack:
            cur = stack.pop()
            for run_id in store.consumers(cur):
                for p in store.edges(run_id).produced:
                    if p.artifact_id not in seen:
                        seen.add(p.artifact_id)
                        out.append(p.artifact_id)
                        stack.append(p.artifact_id)
        return out

    for aid, reason in roots.items():
        backwards(aid, reason)
    for aid, reason in list(roots.items()):
        for d in forwards(aid):
            backwards(d, f"derived from {arts[aid].label} ({reason})")
    # runs in flight: what they (and the other stages of their flow run) use and produce
    running = [r for r in store.runs() if r.status == "running"]
    flows = {r.flow_run_id for r in running if r.flow_run_id}
    busy = {r.run_id for r in running}
    busy |= {r.run_id for r in store.runs() if r.flow_run_id in flows}
    for run_id in busy:
        e = store.edges(run_id)
        for a in e.used + e.produced:
            backwards(a.artifact_id, f"in use by run {run_id} (its flow run is still running)")
    for aid, flow_runs in held(store).items():  # resolved by a running flow, not yet declared by any stage of it
        if aid in arts:
            backwards(aid, f"held by running flow run {', '.join(flow_runs)}")
    return why


def plan(store: LineageStore, artifacts: Path | str, *, keep_last: int = 3, older_than_days: float = 0,
         now: datetime | None = None, deleted: Mapping[int, object] | None = None) -> Plan:
    """What `gc` would remove from `artifacts` (a folder, or an S3 location and its cache on this host).
    `deleted`: artifact_id -> its deletion record (already removed: not again)."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=older_than_days)
    deleted = deleted or {}
    remote = str(artifacts) if is_remote(artifacts) else None
    artifacts_dir = cache_root(remote) if remote is not None else Path(artifacts)
    uploads = remote_folders(remote) if remote is not None else {}
    out = Plan()
    keep = protected(store, keep_last, set(deleted))
    runs = {r.run_id: r for r in store.runs()}
    running = {rid for rid, r in runs.items() if r.status == "running"}
    recorded_paths = set()
    recorded_urls = {a.path for a in store.artifacts() if is_remote(a.path)}
    for a in store.artifacts():
        recorded_paths.add(local_folder(a.path).resolve())  # a version in S3: its cache copy here
        lab = a.label
        if a.artifact_id in deleted:
            out.already_deleted.append(lab)
            continue
        if a.artifact_id in keep:
            out.kept[lab] = keep[a.artifact_id]
            continue
        created = _parse(a.created_at)
        if created is not None and created > cutoff:
            out.kept[lab] = f"younger than {older_than_days:g} day(s)"
            continue
        if is_remote(a.path) or remote is not None:
            if remote is None or not a.path.startswith(f"{remote}/"):
                out.kept[lab] = f"outside {remote or artifacts_dir}: not gc's to remove"
                continue
            if a.path not in uploads:
                out.kept[lab] = "S3 folder already gone (not removed by gc): audit reports it missing"
                continue
            out.removals.append(Removal("artifact", a.path, uploads[a.path][0], "no alias and not among the newest "
                                        "models, nor in the ancestry or derivatives of one", lab, a.artifact_id))
            continue
        path = Path(a.path)
        if not path.resolve().is_relative_to(artifacts_dir.resolve()):
            out.kept[lab] = f"outside {artifacts_dir}: not gc's to remove"
            continue
        if not path.exists():
            out.kept[lab] = "folder already gone (not removed by gc): audit reports it missing"
            continue
        consumers = [runs.get(r) for r in store.consumers(a.artifact_id)]
        why = "no alias and not among the newest models, nor in the ancestry or derivatives of one"
        if not consumers:
            why = "unreferenced: " + why
        out.removals.append(Removal("artifact", str(path), folder_size(path), why, lab, a.artifact_id))
    # S3 folders no record points at: an upload whose stage failed or was killed before the store committed it
    for url, (size, newest) in uploads.items():
        if url in recorded_urls or running or newest is None or newest > cutoff:
            continue  # a running stage may be about to record it
        out.removals.append(Removal("unrecorded-upload", url, size, "an S3 folder no lineage record points at "
                                    "(an upload whose commit never came)"))
    # folders under <type>/<name>/<digest16> that no record points at (a crash between rename and record; in a
    # cache, the copy of a version gc deleted)
    if artifacts_dir.is_dir():
        for folder in candidate_folders(artifacts_dir):
            if folder.resolve() in recorded_paths:
                continue
            mtime = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc)
            if running or mtime > cutoff:  # a running stage may be about to record it
                continue
            out.removals.append(Removal("unrecorded-folder", str(folder), folder_size(folder),
                                        "an artifact folder no lineage record points at"))
        staging = artifacts_dir / STAGING
        if staging.is_dir():
            for d in sorted(p for p in staging.iterdir() if p.is_dir()):
                if d.name in running or (owner(d) is not None and not abandoned(d)):
                    continue  # a stage at work: one the store knows, or a sweep trial's, whose process lives
                state = runs[d.name].status if d.name in runs else "unknown"
                out.removals.append(Removal("staging", str(d), folder_size(d),
                                            f"staging folder of a run that is {state}, not running"))
                _plan_wandb_temp(out, owner(d), f"run {d.name}")
        for record, who in process_records():  # a process killed -9, in a stage or between two
            if ended_here(who):
                _plan_wandb_temp(out, who, f"pid {who['process'].get('pid')}")
                out.removals.append(Removal("wandb-temp", str(record), folder_size(record),
                                            "record of the wandb temporary folders of a process that ended"))
        ckpts = artifacts_dir / CHECKPOINTS
        training_now = any(runs[r].job_type == "train" for r in running)
        if ckpts.is_dir() and not training_now:
            # a checkpoint, its sidecar record, and a write of either that a killed process never finished
            what = {".pt": "training checkpoint", ".json": "training checkpoint's record",
                    ".partial": "unfinished checkpoint write"}
            for f in sorted(ckpts.iterdir()):
                if not f.is_file() or f.suffix not in what:
                    continue
                mtime = datetime.fromtimestamp(f.stat().st_mtime, timezone.utc)
                if mtime > cutoff:
                    continue
                out.removals.append(Removal("checkpoint", str(f), f.stat().st_size,
                                            f"{what[f.suffix]} with no training running (left by a crash)"))
    return out


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _plan_wandb_temp(out: Plan, who: dict | None, whose: str) -> None:
    for t in wandb_temp_left(who):  # its process ended without wandb's exit handler (kill -9)
        if all(r.path != str(t) for r in out.removals):
            out.removals.append(Removal("wandb-temp", str(t), folder_size(t),
                                        f"wandb's temporary folder, left by the ended process of {whose}"))
