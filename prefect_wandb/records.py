"""What the lineage store holds, as frozen records: files, artifact versions, runs, promotion decisions,
deletions by gc, what W&B missed, and the reference to one version that tasks hand each other (`ArtifactRef`).
Plain data: reading and writing them is `store.py`'s job; imports nothing else of the library. `as_json` writes any
record (the audit's, impact's and sync's reports too) as the plain data `json.dumps` takes."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict


def now() -> str:
    """The store's timestamps: UTC, ISO 8601 to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# How long a running run's or a hold's lease lasts unless its process renews it (a stage renews every quarter of
# it): another host's process that stops renewing is taken for dead after this long.
LEASE_S = 120.0


def lease_until(seconds: float | None = None) -> str:
    """The end of a lease taken now (`LEASE_S`, or `seconds`), as the store's timestamps are written."""
    return (datetime.now(timezone.utc) + timedelta(seconds=LEASE_S if seconds is None else seconds)).isoformat(
        timespec="milliseconds")


class ArtifactRef(BaseModel):
    """What tasks hand each other: a small frozen reference to one exact artifact version, never its contents (a
    pydantic model: Prefect passes it between tasks and shows it in the UI)."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    version: int
    digest: str  # sha256 over the artifact's (relpath, sha256) manifest
    path: str  # directory holding the files

    @property
    def label(self) -> str:
        return f"{self.name}:v{self.version}"


class Verdict(Protocol):
    """What the store asks of a gate's answer (`promotion.Decision` is one)."""

    @property
    def decision(self) -> Literal["promoted", "candidate"]: ...

    @property
    def reason(self) -> str: ...

    @property
    def production_value(self) -> float | None: ...

    # optional: `production_metrics_id`, the artifact `production_value` was read from (see `record_promotion`)

# The aliases the pipeline moves: `candidate` (the newest validated model) and `production` (the promoted one).
ALIASES = ("production", "candidate")


@dataclass(frozen=True)
class FileRecord:
    relpath: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactRecord:
    artifact_id: int
    name: str
    type: str
    version: int
    digest: str
    path: str
    metadata: dict
    producer_run_id: str
    created_at: str
    files: tuple[FileRecord, ...]

    @property
    def label(self) -> str:
        """`name:vN`, how every report and message names one version."""
        return f"{self.name}:v{self.version}"

    def ref(self) -> ArtifactRef:
        """The reference tasks hand each other for this version."""
        return ArtifactRef(name=self.name, type=self.type, version=self.version, digest=self.digest, path=self.path)

    def sha256(self, relpath: str) -> str:
        """The recorded sha256 of one of its files (KeyError when it has none of that name)."""
        for f in self.files:
            if f.relpath == relpath:
                return f.sha256
        raise KeyError(f"{self.label} has no file {relpath!r}")

    def inputs(self, type_: str) -> list[dict]:
        """The artifacts of that type this one was made from, as the run that produced it recorded them in its
        metadata (name, type, version, digest, files)."""
        return [i for i in self.metadata.get("inputs", []) if i.get("type") == type_]


@dataclass(frozen=True)
class NewArtifact:
    """An output of a run, its files already in their final place, waiting to be recorded."""

    name: str
    type: str
    digest: str
    path: str
    metadata: dict
    files: tuple[FileRecord, ...]


@dataclass(frozen=True)
class RunRecord:
    """One stage run: its job type, status, W&B whereabouts, the config and environment it ran with."""

    run_id: str
    job_type: str
    status: Literal["running", "finished", "failed"]
    flow_run_id: str | None
    run_group: str | None
    wandb_mode: str | None
    wandb_url: str | None
    wandb_dir: str | None
    wandb_project: str | None
    wandb_entity: str | None
    config: dict
    env: dict
    summary: dict
    started_at: str
    finished_at: str | None
    error: str | None
    lease_expires_at: str | None = None  # while running: renewed by its process (a store from before: None)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        d = dict(row)
        for k in ("config_json", "env_json", "summary_json"):
            d[k.removesuffix("_json")] = json.loads(d.pop(k))
        return cls(**d)


@dataclass(frozen=True)
class PromotionRecord:
    """One promotion decision as recorded (a row of `promotions`)."""

    promotion_id: int
    artifact_id: int
    decision: Literal["promoted", "candidate"]
    reason: str
    candidate_value: float | None  # the candidate's value of the gate's metric
    validation_passed: bool
    production_artifact_id: int | None
    production_value: float | None  # production's value of it, when the decision compared them
    margin: float
    flow_run_id: str | None
    decided_at: str
    wandb_applied_at: str | None = field(default=None)
    kind: str | None = None  # None: the promotion gate; 'rollback': the `rollback` command
    requested_by: str | None = None  # who or what asked for a rollback
    test_set: str | None = None  # digest of the dataset the candidate's metric was measured on (None: unknown)
    metric: str | None = None  # the metric the gate compared (None: a rollback, or a record from before 0002)
    moved: tuple[str, ...] | None = None  # the aliases this decision gave the model (None: before 0002)
    production_metrics_id: int | None = None  # the artifact production_value was read from (None: none, or before 0004)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PromotionRecord:
        d = dict(row)
        from prefect_wandb.migrations import RENAMED_COLUMNS

        for was, now_ in RENAMED_COLUMNS["promotions"].items():
            if was in d:  # a store from before the revision that renamed it, read as it is
                d[now_] = d.pop(was)
        d["validation_passed"] = bool(d["validation_passed"])
        aliases = d.pop("aliases", None)
        d["moved"] = tuple(json.loads(aliases)) if aliases else None
        return cls(**d)

    @property
    def aliases(self) -> list[str]:
        """The aliases this decision gave the model (as recorded; a record from before they were recorded: the
        gate's candidate and production, a rollback's production)."""
        if self.moved is not None:
            return list(self.moved)
        if self.kind == "rollback":  # only production moves back; the candidate stays what it was
            return ["production"]
        return ["candidate"] + (["production"] if self.decision == "promoted" else [])


@dataclass(frozen=True)
class AliasRecord:
    """An alias an artifact version holds now, and when it was set there."""

    alias: str
    set_at: str


@dataclass(frozen=True)
class RunEdges:
    """A run's edges in the lineage graph: the artifact versions it used and those it produced (by artifact id)."""

    used: list[ArtifactRecord]
    produced: list[ArtifactRecord]


@dataclass(frozen=True)
class RejectionRecord:
    """An operator's word about a model the gate must respect (a row of `rejections`): 'reject' (by `rollback`)
    keeps it from being promoted again, 'unreject' (by the `unreject` command) lets the gate consider it."""

    rejection_id: int
    artifact_id: int
    action: Literal["reject", "unreject"]
    source: str  # 'rollback', 'unreject'
    reason: str
    requested_by: str
    at: str

    def describe(self) -> str:
        """'rejected by rollback at <time> (<reason>)', how the gate and the skip rule name it."""
        return f"rejected by {self.source} at {self.at} ({self.reason})"


@dataclass(frozen=True)
class DeletionRecord:
    """An artifact version whose folder `gc` removed; its lineage records stay."""

    artifact_id: int
    path: str
    bytes: int
    reason: str
    deleted_by: str
    deleted_at: str


@dataclass(frozen=True)
class WandbGap:
    """Something a stage could not record in W&B because a W&B call failed: `action` 'upload' (`ref` an artifact
    version `[entity/]project/name:sha256-…`, or the run folder when `call` is 'finish'), 'use' (an input edge,
    `ref` the input's version) or 'aliases' (`ref` the version, `detail` the aliases). `call` names the failed
    W&B call, `error` its one-line error. A stage makes them (`wandb.stage_run.StageRun.gaps`); the store keeps
    them for `sync` (a row of `wandb_gaps`) and gives them back with the run and the time they were recorded."""

    action: str
    ref: str
    call: str
    error: str
    detail: str = ""
    run_id: str = ""
    recorded_at: str = ""


@dataclass(frozen=True)
class WandbVersion:
    """What W&B holds for an artifact version (`WandbBackend.lookup_artifact`): its version, aliases, the run that
    logged it, the runs that use it, and the md5 (base64) of each of its files by relative path."""

    ref: str
    version: str = ""
    aliases: list[str] = field(default_factory=list)
    logged_by: str | None = None
    used_by: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncLogRecord:
    """A step `sync` has done in W&B (a row of `sync_log`): a run's upload (`ref` the run) or a declared input
    (`action` 'use', `ref` the input's version); `detail` what W&B answered, where it says more than done."""

    run_id: str
    action: str
    ref: str
    detail: str | None
    done_at: str


def optional() -> Any:
    """A record field that may be unset (None): `as_json` leaves it out then (a key the JSON has only when set)."""
    return field(default=None, metadata={"optional": True})


def as_json(value: Any) -> Any:
    """`value` with every record in it (a dataclass, also inside lists and dicts) as a dict of its fields in their
    declared order, less the `optional()` ones that are unset: what `json.dumps` writes for the reports."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in fields(value)
                if getattr(value, f.name) is not None or not f.metadata.get("optional")}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value
