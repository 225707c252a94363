"""The audit report: its exit codes, statuses and JSON shape (`AuditReport`), and how a status is concluded from
the checks (`finish`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from prefect_wandb.exit_codes import Exit
from prefect_wandb.records import AliasRecord, DeletionRecord, PromotionRecord, optional

if TYPE_CHECKING:  # the signature checks' own record; importing it at run time would load the crypto libraries
    from prefect_wandb.provenance.verify import Check as SignatureCheck

# The exit code of each conclusion (`Exit`, the one table): verified, every reachable digest matches; tampered, a
# file or record differs from its digest, or an attestation does not verify; unknown, no recorded run made it.
STATUS_EXIT = {"verified": Exit.OK, "tampered": Exit.VERIFY_FAILED, "unknown": Exit.NOT_FOUND}
FAILED = {"mismatch", "missing", "unreadable", "unrecorded", "inconsistent"}

# The config section that matters for each job type, shown in the tree (the JSON holds the whole config).
CONFIG_SECTION = {"prepare-data": "data", "train": "train", "evaluate": "evaluate", "export-onnx": "onnx",
                  "validate-onnx": "onnx"}


class AuditError(Exception):
    """The audit cannot start (no such file, no lineage store): a usage error, exit 2."""


@dataclass(frozen=True)
class Check:
    """One re-verified fact: a file's sha256, a record's consistency, or (online) W&B's copy."""

    kind: str  # query-file, artifact-file, raw-file, record, signature, wandb
    artifact: str | None  # label, e.g. model:v0
    path: str | None
    status: str  # ok, or one of FAILED, or 'unreachable' (a raw file not on this machine: not a failure), or
    # 'deleted' (removed by `gc`, which recorded it: not a failure)
    expected: str | None
    actual: str | None
    detail: str


@dataclass(frozen=True)
class FileEntry:
    relpath: str
    sha256: str
    size: int
    status: str
    actual: str | None


@dataclass(frozen=True)
class ArtifactEntry:
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
    aliases: list[AliasRecord]
    metadata: dict[str, Any]
    status: str  # ok, tampered, or deleted (by gc: its files are gone on purpose)
    deleted: DeletionRecord | None = optional()  # gc's deletion record
    # of a signable or attested artifact: verified, mismatch, missing, deleted, unsigned
    signature: str | None = optional()


@dataclass
class SignatureEntry:
    """One attested file's signature status (or an unsigned ONNX artifact's "unsigned")."""

    artifact: str  # the attested artifact's label, e.g. model-onnx:v0
    relpath: str | None  # the signed file in it (model.onnx)
    path: str | None  # the file verified: the queried copy, or the artifact's own
    status: str  # verified, mismatch, missing (files gone), deleted (by gc), unsigned (no attestation: no failure)
    attestation: str | None  # the attestation artifact's label
    attestation_path: str | None
    sign_run: str | None
    key: str | None  # "given" (--public-key) or "signer" (the attestation's own signer.pub)
    public_key: str | None
    key_fingerprint: str | None  # of the key verified with
    recorded_fingerprint: str | None  # the attestation artifact's metadata
    trusted: bool  # verified against a key the auditor gave, not the folder's own copy
    checks: list[SignatureCheck]  # the signer key, statement signature, subject digest, model-signing bundle
    failed: list[str]  # names of the failed checks
    detail: str


@dataclass(frozen=True)
class WandbEntry:
    mode: str | None
    run_id: str
    url: str | None
    dir: str | None
    project: str | None
    entity: str | None
    synced_at: str | None
    inputs_declared: list[str]


@dataclass(frozen=True)
class CodeEntry:
    """The code a run ran, from its environment record: the git commit and dirty flag of its code root."""

    git_commit: str | None
    git_dirty: bool | None
    source_dir: str | None


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    job_type: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    flow_run_id: str | None
    group: str | None
    code: CodeEntry
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


@dataclass(frozen=True)
class TreeRun:
    """A run in the audit's tree: what it used (each an artifact node, expanded once: `repeat` where seen above)."""

    run: str
    used: list[TreeArtifact]
    repeat: bool | None = optional()


@dataclass(frozen=True)
class TreeArtifact:
    """An artifact version in the audit's tree: the runs that produced it (`repeat` where seen above)."""

    artifact: str
    produced_by: list[TreeRun]
    repeat: bool | None = optional()


@dataclass(frozen=True)
class DownstreamRun:
    """A run made only from what is in the picture (an evaluation, a validation, the promotion): its labels."""

    run: str
    job_type: str | None
    status: str | None
    used: list[str]
    produced: list[str]


@dataclass(frozen=True)
class AuditPromotion(PromotionRecord):
    """A promotion decision in the audit: the record, the model's label, why it is in the picture (`role`: a
    decision about it, or compared against it) and the metrics artifact production's value was read from."""

    artifact: str = ""
    role: str = ""
    compared_with: str | None = None

    @classmethod
    def of(cls, p: PromotionRecord, artifact: str, role: str, compared_with: str | None) -> AuditPromotion:
        return cls(**{f.name: getattr(p, f.name) for f in fields(p)}, artifact=artifact, role=role,
                   compared_with=compared_with)


@dataclass(frozen=True)
class NearMiss:
    """A recorded file with the name of an unknown file (first those of its size too): a hint for an altered copy."""

    artifact: str
    relpath: str
    sha256: str
    size: int
    same_size: bool


@dataclass(kw_only=True)
class AuditReport:
    """The whole audit; `as_json(report)` is the `--json` output (its keys in this order)."""

    schema: int = 1
    query: str
    query_kind: str
    query_path: str | None
    query_sha256: str | None
    identified_by: str | None
    lineage_db: str
    subjects: list[str] = field(default_factory=list)
    artifacts: dict[str, ArtifactEntry] = field(default_factory=dict)  # by label
    runs: dict[str, RunEntry] = field(default_factory=dict)  # by run id
    # nested: artifact -> produced_by runs -> used artifacts -> ...
    upstream: list[TreeArtifact] = field(default_factory=list)
    downstream: list[DownstreamRun] = field(default_factory=list)
    promotions: list[AuditPromotion] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    failures: list[Check] = field(default_factory=list)
    # ["artifact:<label>", "run:<id>"] pairs, in the direction of the data
    edges: list[list[str]] = field(default_factory=list)
    signatures: list[SignatureEntry] = field(default_factory=list)
    status: str = ""  # verified, tampered, unknown (set by `conclude`)
    exit_code: int = Exit.FAILED
    message: str = ""
    near_misses: list[NearMiss] | None = optional()  # unknown: files of the same name (and size)
    wandb_online: dict[str, dict[str, Any]] | None = optional()  # audit --online
    report: str | None = optional()  # the --report file written


def conclude(report: AuditReport, status: str, message: str) -> None:
    report.status, report.exit_code, report.message = status, STATUS_EXIT[status], message


def finish(report: AuditReport) -> None:
    """Set status, exit code and message from the checks."""
    failures = [c for c in report.checks if c.status in FAILED]
    report.failures = failures
    subjects = ", ".join(report.subjects)
    if failures:
        # a changed digest says more than the signature it breaks: it comes first
        first = next((c for c in failures if c.kind != "signature"), failures[0])
        what = "SIGNATURE NOT VERIFIED" if first.kind == "signature" else "TAMPERED"
        conclude(report, "tampered",
                 f"{what}: {first.path}: {first.detail or first.status}"
                 + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    else:
        n = sum(1 for c in report.checks if c.status == "ok" and c.kind != "signature")
        gone = sorted({c.artifact for c in report.checks
                       if c.status == "deleted" and c.artifact and c.kind != "signature"})
        tail = f"; {', '.join(gone)} deleted by gc (on record, files removed)" if gone else ""
        signed = [c for c in report.checks if c.kind == "signature" and c.status == "ok"]
        if signed:
            trusted = all(e.trusted for e in report.signatures if e.status == "verified")
            tail += f"; {len(signed)} signature(s) " + ("verified with the given key" if trusted else
                                                        "consistent with the key they name, not proven against a "
                                                        "trusted key")
        conclude(report, "verified", f"VERIFIED: {subjects}: {n} digests re-checked, all match{tail}")
