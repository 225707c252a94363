"""Provenance audit: which data, code and settings made a file, and is every one of them still intact?

`audit(store, target)` identifies a file (by its sha256, or by its place in the artifact folders), a directory
or an artifact reference (`model-onnx:v0`, `model:production`, `model:sha256-0123abcd...`) in the lineage
store, walks the lineage back to the data (producing runs, their inputs, recursively) and forward (evaluations,
onnxruntime validation, promotion decisions), and re-hashes every file it can reach. The result is one
`AuditReport` of dataclasses (`records.as_json` of it is the `--json` output); `render.py` draws it (tree,
Mermaid/Markdown, HTML, SVG).

Pure: it reads the store and the files on disk; no Prefect, no wandb. The W&B cross-check of `audit --online`
asks a `WandbBackend` (the W&B boundary's `lineage/wandb/client.WandbClient`, or the in-memory
`recording.RecordingWandb`) and folds its answers in as plain data (`wandb_findings`, `apply_wandb_findings`).

Attested files (an `attestation` artifact made from them by a `sign` run) have their signatures verified
offline (`signatures`); a signature that does not verify fails the audit like a changed digest.

The parts: `entries` (types, exit codes, conclusion), `identify`, `walk`, `checks` (verification), `signatures`,
`wandb_findings`, and `assemble` (`audit`); this module is their public surface.
"""

from __future__ import annotations

from prefect_wandb.audit.assemble import audit
from prefect_wandb.audit.entries import (
    CONFIG_SECTION,
    FAILED,
    ArtifactEntry,
    AuditError,
    AuditReport,
    Check,
    FileEntry,
    RunEntry,
    SignatureEntry,
    WandbEntry,
)
from prefect_wandb.audit.identify import REF_RE, Identification, identify, resolve_ref
from prefect_wandb.audit.wandb_findings import apply_wandb_findings, wandb_findings

__all__ = ["CONFIG_SECTION", "FAILED",
           "REF_RE", "ArtifactEntry", "AuditError", "AuditReport", "Check", "FileEntry",
           "Identification", "RunEntry", "SignatureEntry", "WandbEntry", "apply_wandb_findings", "audit", "identify", "resolve_ref",
           "wandb_findings"]
