"""Offline verification of an attested ONNX file: where its attestation is, the three checks, the provenance tree.

Where an attestation is found (first match wins):
1. the one given (`--attestation`): its folder, its `attestation.json`, or its `<name>.intoto.json`;
2. beside the file: `<file>.intoto.json` (and `<file>.sig`) in the same folder, or an `attestation.json` there;
   the attestation artifact's folder holds a copy of the ONNX file beside them, so that folder is what ships;
3. for a file in its content-addressed artifact folder (`<root>/onnx/<name>/<digest16>/model.onnx`, immutable
   once written, so nothing can be put beside it): the attestation artifacts under
   `<root>/attestation/<name>-attestation/*/` that name that ONNX artifact, newest first. A plain folder scan:
   no lineage store is read.

Trust comes from the public key the verifier gives, never from the attestation folder's own `signer.pub`; a
`signer.pub` there that is another key is said (a warning in `VerifyResult.warnings`), not used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prefect_wandb.provenance import bundle, dsse, keys, statement

__all__ = ["INDEX", "MISSING", "VERIFIED", "VerifyResult", "bundle_name", "envelope_name", "locate", "tree", "verify"]

INDEX = "attestation.json"
SIGNER_PUB = "signer.pub"  # attest.SIGNER_PUB: the folder's own copy of the signer's public key
ENVELOPE_SUFFIX, BUNDLE_SUFFIX = ".intoto.json", ".sig"
VERIFIED, MISMATCH, MISSING = "verified", "mismatch", "missing"


def envelope_name(subject: str) -> str:
    return subject + ENVELOPE_SUFFIX


def bundle_name(subject: str) -> str:
    return subject + BUNDLE_SUFFIX


@dataclass(frozen=True)
class Located:
    envelope: Path
    bundle: Path

    @property
    def folder(self) -> Path:
        return self.envelope.parent


@dataclass(frozen=True)
class Check:
    name: str  # "statement signature", "subject digest", "model-signing bundle"
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    file: Path
    attestation: Located | None
    checks: list[Check] = field(default_factory=list)
    statement: dict | None = None  # set only when its DSSE signature verified
    key_fingerprint: str = ""
    note: str = ""
    warnings: list[str] = field(default_factory=list)  # said, not failures: a signer.pub that is another key

    @property
    def status(self) -> str:
        if self.attestation is None:
            return MISSING
        return VERIFIED if self.checks and all(c.ok for c in self.checks) else MISMATCH

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _from_index(index: Path) -> Located | None:
    try:
        meta = json.loads(index.read_text())
        return Located(index.parent / meta["envelope"], index.parent / meta["bundle"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _from_given(given: Path) -> Located | None:
    if given.is_dir():
        if (given / INDEX).is_file():
            return _from_index(given / INDEX)
        envs = sorted(given.glob("*" + ENVELOPE_SUFFIX))
        return _from_envelope(envs[0]) if len(envs) == 1 else None
    if given.name == INDEX:
        return _from_index(given) if given.is_file() else None
    return _from_envelope(given) if given.name.endswith(ENVELOPE_SUFFIX) and given.is_file() else None


def _from_envelope(env: Path) -> Located:
    return Located(env, env.with_name(env.name[: -len(ENVELOPE_SUFFIX)] + BUNDLE_SUFFIX))


def _in_artifacts_tree(file: Path) -> list[Located]:
    folder = file.resolve().parent
    if len(folder.parents) < 3 or not re.fullmatch(r"[0-9a-f]{16}", folder.name) or folder.parents[1].name != "onnx":
        return []
    name, root = folder.parent.name, folder.parents[2]
    found = []
    for index in (root / "attestation" / f"{name}-attestation").glob(f"*/{INDEX}"):
        try:
            art = json.loads(index.read_text()).get("onnx_artifact") or {}
        except (OSError, ValueError):
            continue
        if art.get("name") == name and str(art.get("digest", "")).startswith(folder.name):
            loc = _from_index(index)
            if loc is not None:
                found.append((index.stat().st_mtime_ns, loc))
    return [loc for _, loc in sorted(found, key=lambda t: t[0], reverse=True)]


def locate(file: Path, given: Path | None = None) -> list[Located]:
    """Candidate attestations of `file`, in the order of the module docstring (empty: none)."""
    file = Path(file)
    if given is not None:
        loc = _from_given(Path(given))
        return [loc] if loc is not None else []
    beside = file.parent / envelope_name(file.name)
    if beside.is_file():
        return [_from_envelope(beside)]
    if (file.parent / INDEX).is_file():
        loc = _from_index(file.parent / INDEX)
        if loc is not None and loc.envelope.is_file():
            return [loc]
    return _in_artifacts_tree(file)


def _check_one(file: Path, loc: Located, public_key: Path) -> VerifyResult:
    key = keys.load_public(public_key)  # KeyFileError: the caller's usage problem, not a mismatch
    out = VerifyResult(file=file, attestation=loc, key_fingerprint=keys.fingerprint(key))
    subject_digest = None
    try:
        envelope = json.loads(loc.envelope.read_text())
    except (OSError, ValueError) as e:
        out.checks.append(Check("statement signature", False, f"{loc.envelope}: unreadable ({e})"))
        envelope = None
    if envelope is not None:
        try:
            st = statement.parse(dsse.verify(envelope, key))
            out.statement = st
            out.checks.append(Check("statement signature", True, f"DSSE signature of {loc.envelope.name} verifies "
                                    f"with key {out.key_fingerprint[:16]}"))
            subject_digest = statement.subject(st)[1]
        except (dsse.EnvelopeError, ValueError) as e:
            out.checks.append(Check("statement signature", False, f"{loc.envelope.name}: {e}"))
            # unverified, only to say whether the file matches what it claims
            with contextlib.suppress(KeyError, TypeError, ValueError, binascii.Error):
                subject_digest = statement.subject(statement.parse(base64.b64decode(envelope["payload"])))[1]
    actual = sha256_file(file)
    if subject_digest is None:
        out.checks.append(Check("subject digest", False, f"{file.name}: no attested subject digest to compare with"))
    elif actual != subject_digest:
        out.checks.append(Check("subject digest", False, f"{file}: sha256 {actual[:16]}... does not match the "
                                f"attested subject {subject_digest[:16]}..."))
    else:
        out.checks.append(Check("subject digest", True, f"{file.name}: sha256 {actual[:16]}... is the subject"))
    if not loc.bundle.is_file():
        out.checks.append(Check("model-signing bundle", False, f"{loc.bundle}: missing"))
    else:
        try:
            bundle.verify(file, loc.bundle, public_key)
            out.checks.append(Check("model-signing bundle", True, f"{loc.bundle.name} verifies {file.name}"))
        except bundle.BundleError as e:
            out.checks.append(Check("model-signing bundle", False, f"{loc.bundle.name} does not verify {file}: "
                                    f"{_in_words(str(e), loc.bundle, actual)}"))
    return out


def _signed_digest(bundle_file: Path) -> str | None:
    """The sha256 a model-signing bundle says it signed for a single file (read, not verified: only to word a
    failure); None when it does not say one."""
    try:
        envelope = json.loads(bundle_file.read_text())["dsseEnvelope"]
        resources = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["resources"]
        return str(resources[0]["digest"]) if len(resources) == 1 else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, binascii.Error):
        return None


def _in_words(text: str, bundle_file: Path, actual: str) -> str:
    """model-signing's reason for a failed bundle, in words: its hash mismatch is a list of Python reprs of
    `Digest(digest_value=b'\\x0e...')` objects, said here as the two sha256 hex digests."""
    if "Hash mismatch" in text or "digest_value=b" in text:
        signed = _signed_digest(bundle_file)
        if signed is not None and signed != actual:
            return f"the file's sha256 {actual[:16]}... is not the {signed[:16]}... the bundle signed (the file changed)"
        return "the file's content is not what the bundle signed (the file changed)"
    if re.search(r"(?<!\w)b['\"]|\\x[0-9a-f]{2}", text):  # some other Python bytes repr: no words in it
        return "the bundle's signature does not verify this file with this key"
    return text


def _signer_pub_warning(loc: Located, given: Path) -> str | None:
    """A line when the attestation folder's own public key (its index's `signer_public_key`, else `signer.pub`) is
    not the key given: trust comes from the given key, but a folder naming another signer is worth saying."""
    name = SIGNER_PUB
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name = str(json.loads((loc.folder / INDEX).read_text()).get("signer_public_key") or SIGNER_PUB)
    own = loc.folder / name
    if not own.is_file() or own.resolve() == Path(given).resolve():
        return None
    mine = keys.fingerprint(keys.load_public(given))
    try:
        theirs = keys.fingerprint(keys.load_public(own))
    except keys.KeyFileError as e:
        return f"{own} in the attestation folder is not a usable public key ({e}); it was not used: trust comes " \
               "from --public-key"
    if theirs == mine:
        return None
    return (f"{own} in the attestation folder is key {theirs[:16]}, not the --public-key given (key {mine[:16]}); "
            "it was not used: trust comes from --public-key")


def verify(file: Path, public_key: Path, attestation: Path | None = None) -> VerifyResult:
    """Check `file` against its attestation: the Statement's DSSE signature, the file's sha256 against the
    Statement's subject, and the model-signing bundle. Raises KeyFileError for an unusable public key."""
    file = Path(file)
    keys.load_public(public_key)
    candidates = locate(file, attestation)
    if not candidates:
        where = str(attestation) if attestation is not None else f"beside {file} (or in its artifacts folder)"
        return VerifyResult(file=file, attestation=None, note=f"no attestation for {file.name} found {where}")
    results = []
    for loc in candidates:
        r = _check_one(file, loc, public_key)
        if r.status == VERIFIED:
            results = [r]
            break
        results.append(r)
    out = results[0]
    assert out.attestation is not None
    warning = _signer_pub_warning(out.attestation, public_key)
    if warning:
        out.warnings.append(warning)
    return out


def _short(d: dict | None) -> str:
    sha = (d or {}).get("sha256")
    if sha:
        return f"sha256 {sha[:16]}"
    commit = (d or {}).get("gitCommit")
    return f"git {commit[:12]}" if commit else ""


def tree(st: dict) -> list[str]:
    """The provenance of a verified Statement as a few lines: dataset, raw files, model, code, config, validation."""
    name, digest = statement.subject(st)
    pred = st.get("predicate", {})
    bd, rd = pred.get("buildDefinition", {}), pred.get("runDetails", {})
    lines = [f"{name}  sha256 {digest[:16]}"]
    for ds in statement.dependencies(st, "dataset"):
        a = ds.get("annotations", {})
        lines.append(f"├─ dataset  {ds['name']}  {_short(ds.get('digest'))}  (source {a.get('source')}, "
                     f"slice {a.get('slice')}, {a.get('sizes')})")
    raws = statement.dependencies(st, "raw-file")
    for i, r in enumerate(raws):
        lines.append(f"│  {'└' if i == len(raws) - 1 else '├'}─ raw  {r['name']}  {_short(r.get('digest'))}")
    for m in statement.dependencies(st, "model"):
        lines.append(f"├─ model    {m['name']}  {_short(m.get('digest'))}  ({m.get('uri', '')})")
    for c in statement.dependencies(st, "code"):
        a = c.get("annotations", {})
        state = {True: "dirty tree", False: "clean tree"}.get(a.get("dirty"), "not in git")
        lines.append(f"├─ code     {c['name']}  {_short(c.get('digest')) or c.get('uri', '')}  ({state})")
    pkgs = statement.dependencies(st, "package")
    if pkgs:
        lines.append("│  └─ packages  " + ", ".join(f"{p['name']} {p['annotations'].get('version')}" for p in pkgs))
    cfg = (bd.get("externalParameters") or {}).get("config") or {}
    t = cfg.get("train") or {}
    lines.append(f"├─ config   epochs {t.get('epochs')}, batch {t.get('batch_size')}, lr {t.get('learning_rate')}, "
                 f"kernels {t.get('kernels')}, slice {(cfg.get('data') or {}).get('slice')}; internal "
                 f"{bd.get('internalParameters')}")
    meta, builder = rd.get("metadata") or {}, rd.get("builder") or {}
    lines.append(f"├─ built by {builder.get('id')}  invocation {meta.get('invocationId')}  "
                 f"{meta.get('startedOn')} .. {meta.get('finishedOn')}")
    for b in rd.get("byproducts") or []:
        a = b.get("annotations", {})
        figures = ", ".join(f"{k} {v}" for k, v in a.items() if k != "role")
        lines.append(f"└─ {b['name']}  {_short(b.get('digest'))}  {figures}")
    return lines
