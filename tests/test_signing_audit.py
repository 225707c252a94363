"""`mnist-pipeline audit` of a signed run (real Prefect test server, real offline wandb, real model-signing and
cryptography): each attested file's signature in the tree, the JSON and the reports; another key, a flipped byte in
the Statement or the bundle, a swapped signer.pub fail it (exit 3) naming the check; the attestation's copy of the
ONNX file is its signature, not a second subject. One signed run for the module."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import main
from prefect_wandb.exit_codes import Exit

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def signed(signed_run):
    """The session's signed tiny run (conftest)."""
    return signed_run


def _audit(signed, capsys, *args) -> tuple[int, str, str]:
    rc = main(["audit", *map(str, args), "--lineage-db", str(signed["db"])])
    out = capsys.readouterr()
    return rc, out.out, out.err


class edited:
    """Change one byte of a file for the length of a `with` block (at `offset`, or inside the first base64
    signature value, `"sig": "..."`), then put it back."""

    def __init__(self, path: Path, offset: int | None = None):
        self.path, self.offset = Path(path), offset

    def __enter__(self):
        self.original, self.times = self.path.read_bytes(), self.path.stat()
        at = self.offset
        if at is None:
            m = re.search(rb'"sig":\s*"', self.original)
            assert m, f"no signature value in {self.path}"
            at = m.end() + 8
        data = bytearray(self.original)
        data[at] = ord("A") if data[at] != ord("A") else ord("B")  # still base64: the signature, not the JSON, breaks
        self.path.write_bytes(bytes(data))
        return self.path

    def __exit__(self, *exc):  # as it was, its times included (Prefect's prepare-data cache key reads mtimes)
        self.path.write_bytes(self.original)
        os.utime(self.path, ns=(self.times.st_atime_ns, self.times.st_mtime_ns))


def _signatures(out: str) -> str:
    return out[out.index("\nSignatures\n"):out.index("\nVerification\n")]


def test_a_signed_onnx_audits_with_its_signature_verified(signed, capsys):
    att, onnx_art, sign_run = signed["att"], signed["arts"]["onnx"], signed["runs"]["sign"]
    rc, out, err = _audit(signed, capsys, signed["onnx"])
    assert rc == Exit.OK, out + err
    # the ONNX artifact is the one subject; the attestation is its signature, in the forward walk once
    assert "identified as convnet-onnx:v0 (by sha256)" in out
    forward = out[out.index("Forward"):out.index("Promotions")]
    assert f"sign run {sign_run.run_id}" in forward and f"-> {att.label}" in forward
    assert out.count(f"{att.label} (attestation) sha256") == 1
    sig = _signatures(out)
    assert f"convnet-onnx:v0/model.onnx: signature verified\n    file {signed['onnx']}" in sig
    assert (f"signature verified with the attestation's own signer.pub: consistent with the key it names "
            f"(fingerprint {signed['fp']}), not proven against a trusted key") in sig
    assert f"ok     signer key fingerprint: signer.pub has fingerprint {signed['fp'][:16]}, as recorded" in sig
    for check in ("statement signature", "subject digest", "model-signing bundle"):
        assert f"ok     {check}: " in sig
    assert f"signature verified (model.onnx; key {signed['fp'][:16]}: the attestation's own signer.pub" in \
        out[:out.index("Forward")]  # on the ONNX artifact in the lineage tree
    assert "signature: 1 ok" in out and "not proven against a trusted key" in out.rstrip().splitlines()[-1]

    rc, out, _ = _audit(signed, capsys, signed["onnx"], "--public-key", signed["pub"])
    assert rc == Exit.OK
    assert f"signature verified with the given key {signed['pub']} (fingerprint {signed['fp']})" in out
    assert out.rstrip().endswith("1 signature(s) verified with the given key")
    assert "signer key fingerprint" not in out  # the trusted key is the one the signatures are checked with

    # the attestation's own copy of the file: the same subject, and that copy is the file verified
    rc, out, _ = _audit(signed, capsys, signed["copy"], "--public-key", signed["pub"])
    assert rc == Exit.OK and "identified as convnet-onnx:v0 (by sha256)" in out
    assert "same content as convnet-onnx:v0/model.onnx" in json.dumps(
        json.loads(_audit(signed, capsys, signed["copy"], "--json")[1])["checks"])
    assert f"signature verified\n    file {signed['copy']}" in _signatures(out)

    # the JSON carries it: per file, and on the artifact
    rc, out, _ = _audit(signed, capsys, signed["onnx"], "--json", "--public-key", signed["pub"])
    report = json.loads(out)
    assert rc == report["exit_code"] == Exit.OK and report["subjects"] == ["convnet-onnx:v0"]
    [e] = report["signatures"]
    assert e["artifact"] == "convnet-onnx:v0" and e["attestation"] == att.label and e["status"] == "verified"
    assert e["path"] == str(signed["onnx"]) and e["sign_run"] == sign_run.run_id and e["trusted"] is True
    assert e["key_fingerprint"] == e["recorded_fingerprint"] == att.metadata["public_key_fingerprint"] == signed["fp"]
    assert [c["name"] for c in e["checks"]] == ["statement signature", "subject digest", "model-signing bundle"]
    assert all(c["ok"] for c in e["checks"]) and e["failed"] == []
    assert report["artifacts"]["convnet-onnx:v0"]["signature"] == "verified"
    assert [c["status"] for c in report["checks"] if c["kind"] == "signature"] == ["ok"]
    assert onnx_art.digest == att.metadata["onnx_artifact"]["digest"]


def test_the_reports_show_the_signature(signed, capsys, tmp_path):
    assert main(["audit", str(signed["onnx"]), "--lineage-db", str(signed["db"]), "--report",
                 str(tmp_path / "a.md")]) == 0
    md = (tmp_path / "a.md").read_text()
    assert "## Signatures" in md and "| convnet-onnx:v0/model.onnx | signature verified | its own signer.pub" in md
    assert main(["audit", str(signed["onnx"]), "--lineage-db", str(signed["db"]), "--report",
                 str(tmp_path / "a.html"), "--public-key", str(signed["pub"])]) == 0
    page = (tmp_path / "a.html").read_text()
    assert "<h2>Signatures</h2>" in page and f"<td>given {signed['fp'][:16]}</td>" in page
    assert "<td>signature verified</td>" in page
    capsys.readouterr()


def test_another_key_fails_the_audit_naming_the_file_and_the_checks(signed, capsys):
    rc, out, err = _audit(signed, capsys, signed["onnx"], "--public-key", signed["other"])
    assert rc == Exit.VERIFY_FAILED
    assert f"mnist-pipeline audit: SIGNATURE NOT VERIFIED: {signed['onnx']}: {signed['att'].label} does not " \
           "verify model.onnx: statement signature failed" in err and "model-signing bundle failed" in err
    sig = _signatures(out)
    assert "FAILED statement signature: model.onnx.intoto.json: signed by key" in sig
    assert "FAILED model-signing bundle" in sig and "ok     subject digest" in sig  # the file is intact
    report = json.loads(_audit(signed, capsys, signed["onnx"], "--public-key", signed["other"], "--json")[1])
    assert report["exit_code"] == Exit.VERIFY_FAILED and report["status"] == "tampered"
    [f] = report["failures"]
    assert f["kind"] == "signature" and f["path"] == str(signed["onnx"]) and f["status"] == "mismatch"
    [e] = report["signatures"]
    assert e["status"] == "mismatch" and e["failed"] == ["statement signature", "model-signing bundle"]
    onnx = report["artifacts"]["convnet-onnx:v0"]
    assert onnx["status"] == "ok" and onnx["signature"] == "mismatch"  # its files match: only trust fails
    # a key that is no key: a usage error before anything is audited
    rc, out, err = _audit(signed, capsys, signed["onnx"], "--public-key", signed["db"])
    assert rc == Exit.USAGE and out == "" and "mnist-pipeline audit: --public-key:" in err


@pytest.mark.parametrize("which, check", [("model.onnx.intoto.json", "statement signature"),
                                          ("model.onnx.sig", "model-signing bundle")])
def test_a_flipped_byte_in_the_statement_or_the_bundle_fails_the_audit(signed, capsys, which, check):
    target = Path(signed["att"].path) / which
    for key in ((), ("--public-key", signed["pub"])):
        with edited(target):
            rc, out, err = _audit(signed, capsys, signed["onnx"], *key)
        assert rc == Exit.VERIFY_FAILED, out
        sig = _signatures(out)
        assert "convnet-onnx:v0/model.onnx: SIGNATURE NOT VERIFIED" in sig and f"FAILED {check}: " in sig
        others = {"statement signature", "model-signing bundle"} - {check}
        assert all(f"ok     {o}: " in sig for o in others), sig
        # both failures listed; its recorded digest no longer matching comes first in the verdict
        assert f"MISMATCH {target}: sha256" in out and f"mnist-pipeline audit: TAMPERED: {target}: sha256" in err
        assert f"MISMATCH {signed['onnx']}: {signed['att'].label} does not verify model.onnx: {check} failed" in out
    assert _audit(signed, capsys, signed["onnx"])[0] == Exit.OK  # put back: verifies again


def test_a_swapped_signer_pub_is_caught_by_its_recorded_fingerprint(signed, capsys):
    signer = Path(signed["att"].path) / "signer.pub"
    original = signer.read_bytes()
    signer.write_bytes(signed["other"].read_bytes())
    try:
        rc, out, err = _audit(signed, capsys, signed["onnx"], "--json")
    finally:
        signer.write_bytes(original)
    report = json.loads(out)
    assert rc == Exit.VERIFY_FAILED
    [e] = report["signatures"]
    assert e["failed"][0] == "signer key fingerprint" and e["key"] == "signer"
    assert f"but the store records {signed['fp'][:16]}" in e["checks"][0]["detail"]


def test_a_copy_of_the_store_without_the_attestation_folder_fails_as_missing(signed, capsys, tmp_path):
    """The attestation on record, its folder gone (not by gc): the signature cannot be checked, which fails."""
    folder = Path(signed["att"].path)
    moved = tmp_path / "away"
    shutil.move(folder, moved)
    try:
        rc, out, _ = _audit(signed, capsys, signed["onnx"], "--json")
    finally:
        shutil.move(moved, folder)
    report = json.loads(out)
    assert rc == Exit.VERIFY_FAILED
    [e] = report["signatures"]
    assert e["status"] == "missing" and f"its folder {folder} is missing" in e["detail"]
    assert report["artifacts"]["convnet-onnx:v0"]["signature"] == "missing"


def test_a_signed_audit_imports_neither_prefect_nor_wandb_nor_torch(signed):
    code = ("import sys; from mnist_pipeline.cli.main import main; rc = main(['audit', sys.argv[1], '--lineage-db', "
            "sys.argv[2], '--public-key', sys.argv[3]]); heavy = [m for m in ('prefect', 'wandb', 'torch') "
            "if m in sys.modules]; print('HEAVY', heavy, 'provenance' in str(sorted(sys.modules))); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(signed["onnx"]), str(signed["db"]), str(signed["pub"])],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "signature verified with the given key" in out.stdout
    assert "HEAVY [] True" in out.stdout  # and the signature checks did run in it
