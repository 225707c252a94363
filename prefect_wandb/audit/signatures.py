"""The audit's signature checks: for each artifact in the picture that a `sign` run attested (the run used it and
produced an `attestation` artifact whose subject is one of its files), the file is verified offline
(`prefect_wandb.provenance.verify`) against that attestation folder, with the auditor's public key, or lacking one
with the attestation's own `signer.pub` (which only shows the folder is consistent with the key it names, and that
this key's fingerprint is the one recorded in the store). ONNX artifacts without an attestation are "unsigned":
shown, never a failure.

The provenance package (cryptography, model-signing) is imported only when an attestation is found, so an audit of
unsigned runs loads neither."""

from __future__ import annotations

from pathlib import Path

from prefect_wandb.artifact_files import local_folder, readable_folder
from prefect_wandb.audit.checks import Verifier
from prefect_wandb.audit.entries import SignatureEntry
from prefect_wandb.store import ArtifactRecord, LineageStore

ATTESTATION_TYPE = "attestation"
SIGNABLE_TYPES = {"onnx"}  # what the sign stage signs: these say "unsigned" when nothing attests them
SIGNATURE_ORDER = ("mismatch", "missing", "deleted", "verified", "unsigned")  # worst first
SIGNER_PUB = "signer.pub"  # provenance.attest.SIGNER_PUB, named here so an unsigned audit does not import it


def attested_subject(att: ArtifactRecord) -> str | None:
    """The sha256 of the file an attestation artifact signs (its recorded index), if it names one."""
    subject = att.metadata.get("subject")
    return subject.get("sha256") if isinstance(subject, dict) else None


def attestations_of(store: LineageStore, rec: ArtifactRecord) -> list[tuple[str, ArtifactRecord, str]]:
    """(sign run id, attestation artifact, attested relpath) for each attestation made from `rec`: produced by a
    run that used `rec`, naming one of `rec`'s files as its subject."""
    files = {f.sha256: f.relpath for f in rec.files}
    out = []
    for run_id in store.consumers(rec.artifact_id):
        for att in store.edges(run_id).produced:
            sha = attested_subject(att) if att.type == ATTESTATION_TYPE else None
            if sha in files:
                out.append((run_id, att, files[sha]))
    return out


def is_signature_of(att: ArtifactRecord, other: ArtifactRecord) -> bool:
    """Whether `att` is the attestation of `other` (its copy of the signed file has the same sha256, so a file query
    finds both): the ONNX artifact is then the subject, the attestation its signature."""
    named = att.metadata.get("onnx_artifact") or {}
    return att.type == ATTESTATION_TYPE and other.type != ATTESTATION_TYPE and \
        named.get("name") == other.name and named.get("digest") == other.digest


def _entry(rec: ArtifactRecord, relpath: str | None, path: Path | None, status: str, detail: str,
           att: ArtifactRecord | None = None, run_id: str | None = None) -> SignatureEntry:
    return SignatureEntry(artifact=rec.label, relpath=relpath, path=str(path) if path else None, status=status,
                          attestation=att.label if att else None, attestation_path=att.path if att else None,
                          sign_run=run_id, key=None, public_key=None, key_fingerprint=None,
                          recorded_fingerprint=att.metadata.get("public_key_fingerprint") if att else None,
                          trusted=False, checks=[], failed=[], detail=detail)


def _verify(e: SignatureEntry, file: Path, att: ArtifactRecord, public_key: Path | None) -> None:
    from prefect_wandb.provenance import keys
    from prefect_wandb.provenance.verify import MISSING, VERIFIED, Check, verify

    folder = readable_folder(att.path, att.files)
    recorded = e.recorded_fingerprint
    checks = e.checks
    if public_key is not None:
        key, e.key, e.trusted = Path(public_key), "given", True
    else:
        key, e.key = folder / str(att.metadata.get("signer_public_key") or SIGNER_PUB), "signer"
    e.public_key = str(key)
    try:
        fp = keys.fingerprint(keys.load_public(key))
    except keys.KeyFileError as err:  # a given key was checked before the audit: this is the folder's own copy
        checks.append(Check("signer key", False, str(err)))
        fp = None
    if fp is not None:
        e.key_fingerprint = fp
        if public_key is None:
            ok = fp == recorded
            checks.append(Check("signer key fingerprint", ok,
                                f"{key.name} has fingerprint {fp[:16]}, as recorded for {att.label}" if ok else
                                f"{key.name} has fingerprint {fp[:16]}, but the store records {str(recorded)[:16]} "
                                f"for {att.label}"))
        result = verify(file, key, attestation=folder)
        if result.status == MISSING:
            checks.append(Check("attestation files", False, result.note))
        checks += result.checks
        verified = result.status == VERIFIED
    else:
        verified = False
    e.failed = [c.name for c in checks if not c.ok]
    if verified and not e.failed:
        e.status = "verified"
        e.detail = (f"signature verified with the given key {key} (fingerprint {fp})" if e.trusted else
                    f"signature verified with the attestation's own {key.name}: consistent with the key it "
                    f"names (fingerprint {fp}), not proven against a trusted key (give --public-key)")
    else:
        e.status = "mismatch"
        e.detail = f"{att.label} does not verify {file.name}: " + "; ".join(
            f"{c.name} failed ({c.detail})" for c in checks if not c.ok)


def check_signatures(store: LineageStore, arts: dict[int, ArtifactRecord], v: Verifier, *,
                     public_key: Path | None = None, query: tuple[int, Path] | None = None) -> list[SignatureEntry]:
    """One entry per attested file (and per unsigned signable artifact) among `arts`, each also added to `v`'s
    checks (kind "signature": ok, mismatch, missing or deleted; an unsigned file adds no check).

    `query`: (artifact id, path) of a queried file identified by its content: that file, the one the auditor holds,
    is the one verified."""
    entries: list[SignatureEntry] = []
    for aid, rec in sorted(arts.items()):
        if rec.type == ATTESTATION_TYPE:
            continue
        found = attestations_of(store, rec)
        if not found:
            if rec.type in SIGNABLE_TYPES:
                entries.append(_entry(rec, None, None, "unsigned", "unsigned: no attestation on record"))
            continue
        for run_id, att, relpath in found:
            file = query[1] if query and query[0] == aid else readable_folder(rec.path, rec.files) / relpath
            e = _entry(rec, relpath, file, "missing", "", att, run_id)
            gone = v.deleted.get(att.artifact_id) or v.deleted.get(aid)
            if gone is not None and not (local_folder(att.path).is_dir() and file.is_file()):
                e.status = "deleted"
                e.detail = f"not checked: deleted by gc on {gone.deleted_at[:10]} ({gone.reason})"
            elif not file.is_file():
                e.detail = f"{file}: missing, its signature cannot be checked"
            elif not readable_folder(att.path, att.files).is_dir():
                e.detail = f"{att.label}: its folder {att.path} is missing"
            else:
                _verify(e, file, att, public_key)
            entries.append(e)
            status = {"verified": "ok", "mismatch": "mismatch"}.get(e.status, e.status)
            v.add("signature", rec.label, str(file), status, e.recorded_fingerprint, e.key_fingerprint, e.detail)
    return entries
