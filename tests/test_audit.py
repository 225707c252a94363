"""`mnist-pipeline audit` on a real end-to-end run (real Prefect test server, real offline wandb, real SQLite):
the full chain, tampering in place, unknown files, JSON, and the reports a person opens."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import _parser, main
from prefect_wandb.audit import apply_wandb_findings, audit
from prefect_wandb.audit.render import render_mermaid, render_tree
from prefect_wandb.cli.audit import audit_main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.hashing import md5_b64
from prefect_wandb.records import as_json
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import LineageStore, NewArtifact
from tests.helpers import STEMS, copy_sqlite

ROOT = Path(__file__).resolve().parents[1]


def tree_chain(node: dict) -> list[str]:
    """The upstream tree's node names in drawing order (`artifact:<label>` / `run:<id>`), for comparing outputs."""
    if "artifact" in node:
        return [f"artifact:{node['artifact']}"] + [x for r in node["produced_by"] for x in tree_chain(r)]
    return [f"run:{node['run']}"] + [x for a in node["used"] for x in tree_chain(a)]


@pytest.fixture
def e2e(offline_run):
    """The session's tiny offline run (conftest), whose flow promoted its model: a real promotion decision."""
    [decision] = offline_run["store"].promotions(offline_run["arts"]["model"].artifact_id)
    assert decision.decision == "promoted"
    return offline_run


def _audit(e2e, capsys, *args) -> tuple[int, str, str]:
    rc = main(["audit", *map(str, args), "--lineage-db", str(e2e["db"])])
    out = capsys.readouterr()
    return rc, out.out, out.err


class flipped:
    """Flip one byte of a file for the length of a `with` block, then put it back."""

    def __init__(self, path: Path, offset: int = 100):
        self.path, self.offset = Path(path), offset

    def __enter__(self):
        self.original, self.times = self.path.read_bytes(), self.path.stat()
        data = bytearray(self.original)
        data[self.offset] ^= 0xFF
        self.path.write_bytes(bytes(data))
        return self.path

    def __exit__(self, *exc):  # as it was, its times included (Prefect's prepare-data cache key reads mtimes)
        self.path.write_bytes(self.original)
        os.utime(self.path, ns=(self.times.st_atime_ns, self.times.st_mtime_ns))


def _positions(text: str, needles: list[str]) -> list[int]:
    """Where each needle occurs in `text`, each search starting after the previous hit."""
    pos, out = 0, []
    for n in needles:
        i = text.find(n, pos)
        assert i >= 0, f"{n!r} not found (in order) in the output"
        out.append(i)
        pos = i + len(n)
    return out


# --------------------------------------------------------------------------------------------- the full chain


def test_audit_of_the_onnx_file_shows_the_full_chain_and_exits_0(e2e, capsys):
    rc, out, err = _audit(e2e, capsys, e2e["onnx"])
    assert rc == Exit.OK, out + err
    arts, runs = e2e["arts"], e2e["runs"]
    train_env = runs["train"].env
    [raw] = [r for r in arts["dataset"].metadata["raw_files"] if r["name"] == STEMS[("train", "images")]]
    # ONNX -> export-onnx run -> model -> train run -> dataset -> prepare-data run, in that order
    _positions(out, [f"{arts['onnx'].name}:v0 (onnx) sha256 {arts['onnx'].digest[:16]}",
                     f"produced by export-onnx run {runs['export-onnx'].run_id}",
                     f"used convnet:v0 (model) sha256 {arts['model'].digest[:16]}",
                     f"produced by train run {runs['train'].run_id}",
                     "config train: batch_size=16", "epochs=1", "seed=0",
                     f"used mnist:v0 (dataset) sha256 {arts['dataset'].digest[:16]}",
                     f"source local ({e2e['src']})", "sizes {test: 40, train: 120}",
                     "class counts train [12, 12, 12, 12, 12, 12, 12, 12, 12, 12]",
                     f"raw {raw['name']} sha256 {raw['sha256'][:16]} {raw['size']} B  ok",
                     f"produced by prepare-data run {runs['prepare-data'].run_id}"])
    # the training run: code, packages, Prefect flow run, W&B run
    assert f"code git {train_env['git_commit']}" in out
    assert ("(dirty: uncommitted changes)" if train_env["git_dirty"] else "(clean)") in out
    assert f"torch {train_env['packages']['torch']}" in out and f"onnx {train_env['packages']['onnx']}" in out
    assert f"Prefect flow run {runs['train'].flow_run_id}" in out
    assert f"W&B run {runs['train'].run_id} (offline, not synced yet): {runs['train'].wandb_dir}" in out
    # forward: the evaluation metrics, the onnxruntime validation report, the promotion decision
    forward = out[out.index("Forward"):]
    assert f"evaluate run {runs['evaluate'].run_id}" in forward and "convnet-metrics:v0 (metrics)" in forward
    assert f"test_accuracy {arts['metrics'].metadata['test_accuracy']:.4g}" in forward
    assert f"validate-onnx run {runs['validate-onnx'].run_id}" in forward
    assert "convnet-onnx-validation:v0 (validation)" in forward and "passed True" in forward
    assert "max_abs_diff" in forward and "argmax_agreement 1" in forward
    promotions = out[out.index("Promotions"):]
    assert "convnet:v0 PROMOTED (decision about it): first validated model" in promotions
    assert "aliases candidate" in out and "production (since" in out
    # and the run report written about it (it shows the decision), an artifact like the rest
    assert f"report run {runs['report'].run_id}" in forward and "run-report:v0 (report)" in forward
    # every digest re-checked: 10 artifact files in 6 artifacts, 4 raw files, 6 records, the queried file
    assert "artifact-file: 11 ok" in out and "raw-file: 4 ok" in out and "record: 6 ok" in out
    assert out.rstrip().endswith("VERIFIED: convnet-onnx:v0: 22 digests re-checked, all match")
    assert err == ""


def test_a_weights_file_copied_anywhere_is_identified_by_its_sha256(e2e, capsys, tmp_path):
    copy = tmp_path / "deployed" / "weights.bin"
    copy.parent.mkdir()
    shutil.copy(e2e["model_pt"], copy)
    rc, out, _ = _audit(e2e, capsys, copy)
    assert rc == Exit.OK
    assert f"Audit of {copy}" in out and "identified as convnet:v0 (by sha256)" in out
    lineage = out[out.index("Lineage"):out.index("Forward")]
    assert "convnet-onnx" not in lineage and "produced by train run" in lineage and "used mnist:v0" in lineage
    forward = out[out.index("Forward"):out.index("Promotions")]
    # made from this model: its metrics, its ONNX export and that export's validation
    for job, produced in (("evaluate", "convnet-metrics:v0"), ("export-onnx", "convnet-onnx:v0"),
                          ("validate-onnx", "convnet-onnx-validation:v0")):
        assert f"{job} run {e2e['runs'][job].run_id}" in forward and f"-> {produced}" in forward


def test_artifact_references_resolve_like_wandb_refs(e2e, capsys):
    onnx = e2e["arts"]["onnx"]
    for ref in ("convnet:production", "convnet:candidate", "convnet:latest", "convnet:v0",
                f"someone/mnist-lineage/convnet:sha256-{e2e['arts']['model'].digest[:16]}"):
        rc, out, _ = _audit(e2e, capsys, ref)
        assert rc == Exit.OK and "identified as convnet:v0 (by ref)" in out, ref
    rc, out, _ = _audit(e2e, capsys, f"convnet-onnx:{onnx.digest[:12]}")
    assert rc == Exit.OK and "identified as convnet-onnx:v0" in out
    rc, out, _ = _audit(e2e, capsys, Path(onnx.path))  # the artifact folder itself
    assert rc == Exit.OK and "identified as convnet-onnx:v0 (by location)" in out


def test_an_unsigned_onnx_says_unsigned_and_still_verifies(e2e, capsys):
    rc, out, err = _audit(e2e, capsys, e2e["onnx"])
    assert rc == Exit.OK, err
    lineage = out[out.index("Lineage"):out.index("Forward")]
    assert "unsigned (no attestation on record)" in lineage  # on the ONNX artifact
    assert "convnet-onnx:v0: unsigned (no attestation on record; not a failure)" in out[out.index("\nSignatures"):]
    assert "signature:" not in out[out.index("Verification"):]  # nothing to check is no check, and no failure
    rc, out, _ = _audit(e2e, capsys, e2e["onnx"], "--json")
    report = json.loads(out)
    assert [(e["artifact"], e["status"], e["attestation"]) for e in report["signatures"]] == \
        [("convnet-onnx:v0", "unsigned", None)]
    assert report["artifacts"]["convnet-onnx:v0"]["signature"] == "unsigned"
    assert "signature" not in report["artifacts"]["convnet:v0"]  # only what the sign stage signs says so


# --------------------------------------------------------------------------------------------- tampering


def test_flipping_one_byte_of_the_onnx_file_fails_the_audit_and_names_it(e2e, capsys):
    onnx = e2e["onnx"]
    with flipped(onnx):
        rc, out, err = _audit(e2e, capsys, onnx)
    assert rc == Exit.VERIFY_FAILED
    assert f"mnist-pipeline audit: TAMPERED: {onnx}: sha256" in err and "does not match the recorded" in err
    assert "identified as convnet-onnx:v0 (by location)" in out  # recognised by where it lies, not its content
    assert "[TAMPERED: model.onnx]" in out and f"MISMATCH {onnx}" in out
    rc, _, _ = _audit(e2e, capsys, onnx)  # restored: passes again
    assert rc == Exit.OK


def test_flipping_one_byte_of_the_dataset_file_fails_the_onnx_audit_and_names_it(e2e, capsys):
    train_pt = Path(e2e["arts"]["dataset"].path) / "train.pt"
    with flipped(train_pt, offset=-200):
        rc, out, err = _audit(e2e, capsys, e2e["onnx"])
    assert rc == Exit.VERIFY_FAILED
    assert f"TAMPERED: {train_pt}: sha256" in err
    assert "mnist:v0 (dataset)" in out and "[TAMPERED: train.pt]" in out
    assert "convnet-onnx:v0 (onnx) sha256" in out and "[2 file(s) ok]" in out  # the ONNX file itself is intact


def test_a_swapped_model_with_an_edited_record_still_fails(e2e, capsys, tmp_path):
    """Replace model.onnx and 'fix' its sha256 in (a copy of) the store: the record no longer hashes to its
    digest, the metadata disagrees, and the validation run's recorded inputs name the original."""
    db = copy_sqlite(e2e["db"], tmp_path / "lineage.db")
    onnx = e2e["onnx"]
    with flipped(onnx):
        from prefect_wandb.hashing import sha256_file

        con = sqlite3.connect(db)
        con.execute("UPDATE artifact_files SET sha256 = ? WHERE relpath = 'model.onnx'", (sha256_file(onnx),))
        con.commit()
        con.close()
        rc = main(["audit", str(onnx), "--lineage-db", str(db)])
    out = capsys.readouterr()
    assert rc == Exit.VERIFY_FAILED
    assert "its digest is not the hash of its recorded files" in out.out
    assert "its metadata lists other file digests than its file records" in out.out


def test_a_file_added_to_an_artifact_folder_fails_the_audit(e2e, capsys):
    extra = Path(e2e["arts"]["model"].path) / "model-v2.pt"
    extra.write_bytes(b"swapped in later")
    try:
        rc, out, err = _audit(e2e, capsys, e2e["onnx"])
    finally:
        extra.unlink()
    assert rc == Exit.VERIFY_FAILED and f"TAMPERED: {extra}: file in the artifact folder that is not on record" in err


def test_raw_files_are_rechecked_in_the_immutable_copy_the_dataset_was_read_from(e2e, capsys):
    [info] = [r for r in e2e["arts"]["dataset"].metadata["raw_files"] if r["name"] == STEMS[("test", "labels")]]
    stored = Path(info["stored"])  # <root>/sha256/<digest>/MNIST/raw/..., read-only, named by content
    assert stored.parts[-5] == "sha256" and stored.stat().st_mode & 0o222 == 0
    with flipped(stored, offset=20):
        rc, _, err = _audit(e2e, capsys, e2e["onnx"])
        assert rc == Exit.VERIFY_FAILED and f"TAMPERED: {stored}: sha256" in err
        rc, out, _ = _audit(e2e, capsys, e2e["onnx"], "--skip-raw-files")
        assert rc == Exit.OK and "raw-file" not in out[out.index("Verification"):]
    # the user's source folder may change later (a new download, another subset): that is not a tampering
    with flipped(e2e["src"] / "MNIST" / "raw" / STEMS[("test", "labels")], offset=20):
        rc, out, err = _audit(e2e, capsys, e2e["onnx"])
        assert rc == Exit.OK, err


# --------------------------------------------------------------------------------------------- unknown


def test_an_unknown_file_gets_a_clear_answer_and_its_own_exit_code(e2e, capsys, tmp_path):
    stranger = tmp_path / "model.onnx"
    stranger.write_bytes(b"\x08\x07" + bytes(range(256)) * 10)
    rc, out, err = _audit(e2e, capsys, stranger)
    assert rc == Exit.NOT_FOUND and Exit.NOT_FOUND != Exit.VERIFY_FAILED
    assert f"UNKNOWN: {stranger}: not produced by any recorded run" in out
    assert "Traceback" not in out + err and f"{stranger}: not produced by any recorded run" in err
    assert "(same name as convnet-onnx:v0/model.onnx" in out  # a hint, not a match


def test_a_tampered_copy_elsewhere_is_unknown_with_a_hint(e2e, capsys, tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copy(e2e["onnx"], copy)
    with flipped(copy):
        rc, out, _ = _audit(e2e, capsys, copy)
    assert rc == Exit.NOT_FOUND
    assert "(same name and size as convnet-onnx:v0/model.onnx, recorded sha256" in out


def test_unknown_references_missing_files_and_missing_stores(e2e, capsys, tmp_path):
    rc, out, _ = _audit(e2e, capsys, "convnet:v7")
    assert rc == Exit.NOT_FOUND and "convnet:v7: no such artifact version" in out
    rc, _, err = _audit(e2e, capsys, tmp_path / "nothing-here.onnx")
    assert rc == Exit.USAGE and "no such file or directory" in err
    missing_db = tmp_path / "none" / "lineage.db"
    assert main(["audit", str(e2e["onnx"]), "--lineage-db", str(missing_db)]) == Exit.USAGE
    assert "no lineage store at" in capsys.readouterr().err and not missing_db.parent.exists()


# --------------------------------------------------------------------------------------------- JSON and reports


def test_json_output_parses_and_holds_the_same_chain_as_the_tree(e2e, capsys):
    rc, tree, _ = _audit(e2e, capsys, e2e["onnx"])
    rc_json, out, _ = _audit(e2e, capsys, e2e["onnx"], "--json")
    report = json.loads(out)
    assert rc == rc_json == report["exit_code"] == Exit.OK and report["status"] == "verified"
    chain = tree_chain(report["upstream"][0])
    runs = e2e["runs"]
    assert chain == ["artifact:convnet-onnx:v0", f"run:{runs['export-onnx'].run_id}", "artifact:convnet:v0",
                     f"run:{runs['train'].run_id}", "artifact:mnist:v0", f"run:{runs['prepare-data'].run_id}"]
    # the tree draws the same nodes in the same order
    _positions(tree, [n.split(":", 1)[1] + (" (" if n.startswith("artifact") else " (finished") for n in chain])
    train = report["runs"][runs["train"].run_id]
    assert train["code"]["git_commit"] == runs["train"].env["git_commit"]
    assert train["code"]["git_dirty"] == runs["train"].env["git_dirty"]
    assert train["seed"] == 0 and train["config"]["train"]["epochs"] == 1
    assert train["packages"]["torch"] and train["flow_run_id"] == runs["train"].flow_run_id
    assert train["wandb"]["run_id"] == runs["train"].run_id and train["wandb"]["mode"] == "offline"
    data = report["artifacts"]["mnist:v0"]
    assert data["metadata"]["sizes"] == {"train": 120, "test": 40}
    assert [r["status"] for r in data["raw_files"]] == ["ok"] * 4
    produced = {d["job_type"]: d["produced"] for d in report["downstream"]}
    assert produced["evaluate"] == ["convnet-metrics:v0"]
    assert produced["validate-onnx"] == ["convnet-onnx-validation:v0"]
    assert produced["report"] == ["run-report:v0"]
    assert all(d["produced"] == [] for d in report["downstream"]
               if d["job_type"] not in ("evaluate", "validate-onnx", "report"))
    assert report["promotions"][0]["decision"] == "promoted" and report["promotions"][0]["artifact"] == "convnet:v0"
    assert {c["status"] for c in report["checks"]} == {"ok"} and report["failures"] == []
    assert all(a["digest"] == e2e["arts"][a["type"]].digest for a in report["artifacts"].values())
    # the same after tampering: JSON says which file, with both digests
    with flipped(e2e["onnx"]):
        rc, out, _ = _audit(e2e, capsys, e2e["onnx"], "--json")
    bad = json.loads(out)
    assert rc == bad["exit_code"] == Exit.VERIFY_FAILED
    [f] = bad["failures"]
    assert f["path"] == str(e2e["onnx"]) and f["status"] == "mismatch" and f["expected"] != f["actual"]
    assert bad["artifacts"]["convnet-onnx:v0"]["status"] == "tampered"


def test_mermaid_markdown_html_and_svg_reports(e2e, capsys, tmp_path):
    rc, out, _ = _audit(e2e, capsys, e2e["onnx"], "--json", "--report", tmp_path / "audit.md")
    report = json.loads(out)
    md = (tmp_path / "audit.md").read_text()
    assert report["report"] == str(tmp_path / "audit.md")
    assert "```mermaid\nflowchart LR" in md and "VERIFIED: convnet-onnx:v0" in md
    mermaid = md.split("```mermaid\n")[1].split("```")[0]
    on_record = sum(len(e.used) + len(e.produced) for e in map(e2e["store"].edges, report["runs"]))
    assert len(re.findall(r"^    \w+ --> \w+$", mermaid, re.M)) == len(report["edges"]) == on_record >= 12
    for lab in report["artifacts"]:
        assert f'"{lab}<br/>' in mermaid
    assert re.search(r"^    class (\w+) subject$", mermaid, re.M)
    assert "| ok | artifact-file | convnet-onnx:v0 |" in md

    assert main(["audit", str(e2e["onnx"]), "--lineage-db", str(e2e["db"]), "--report",
                 str(tmp_path / "audit.html")]) == 0
    page = (tmp_path / "audit.html").read_text()
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert set(report["artifacts"]) <= texts and {"train", "export-onnx", "prepare-data"} <= texts
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}path"))) == on_record + 1  # edges + the arrow head
    assert "Lineage (back to the data)" in page and "<script" not in page  # self-contained, opens offline

    with flipped(e2e["onnx"]):
        assert main(["audit", str(e2e["onnx"]), "--lineage-db", str(e2e["db"]), "--report",
                     str(tmp_path / "bad.svg")]) == Exit.VERIFY_FAILED
    bad = ET.parse(tmp_path / "bad.svg").getroot()
    red = [r for r in bad.iter("{http://www.w3.org/2000/svg}rect") if r.get("stroke") == "#c01c28"]
    assert len(red) == 1  # the ONNX artifact, drawn in red
    capsys.readouterr()
    assert main(["audit", str(e2e["onnx"]), "--lineage-db", str(e2e["db"]), "--report", str(tmp_path / "x.pdf")]) \
        == Exit.USAGE


def test_the_html_report_escapes_what_the_records_say(e2e, capsys, tmp_path):
    """A message, a check's detail, a run's error or a signature holding markup shows as text (Jinja2's
    autoescape): no tag of its own reaches the page."""
    from dataclasses import replace

    from prefect_wandb.audit.render import write_report

    script, attr = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
    report = audit(e2e["store"], str(e2e["onnx"]))
    report.message += script
    report.checks = [replace(c, detail=c.detail + attr) for c in report.checks]
    run_id = next(iter(report.runs))
    report.runs[run_id] = replace(report.runs[run_id], error=script)
    report.signatures[0].artifact += script
    page = write_report(report, tmp_path / "audit.html").read_text()
    assert "<script" not in page.lower() and "<img" not in page and "onerror=alert(1)>" not in page
    assert f"{report.message[:-len(script)]}&lt;script&gt;alert(1)&lt;/script&gt; (exit 0)</p>" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</td></tr>" in page
    assert "error: &lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the tree
    assert "<td>convnet-onnx:v0&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page  # the signatures table


def test_the_audit_command_imports_neither_prefect_nor_wandb_nor_torch(e2e):
    code = ("import sys; from mnist_pipeline.cli.main import main; rc = main(['audit', sys.argv[1], '--lineage-db', sys.argv[2]]);"
            "heavy = [m for m in ('prefect', 'wandb', 'torch') if m in sys.modules];"
            "print('HEAVY', heavy); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(e2e["onnx"]), str(e2e["db"])], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


# --------------------------------------------------------------------------------------------- online cross-check


def test_online_cross_check_with_what_wandb_holds(e2e, capsys):
    from prefect_wandb.recording import RecordingWandb
    from prefect_wandb.refs import wandb_ref

    report = audit(e2e["store"], str(e2e["onnx"]))
    artifacts = {}
    for a in report.artifacts.values():
        artifacts[f"{a.name}:{a.wandb_alias}"] = {
            "version": "v0", "aliases": ["latest", a.wandb_alias], "logged_by": a.producer_run_id,
            "used_by": a.consumers, "files": {f.relpath: md5_b64(Path(a.path) / f.relpath) for f in a.files}}
    fake = RecordingWandb(artifacts=artifacts)
    ns = _parser().parse_args(["audit", str(e2e["onnx"]), "--lineage-db", str(e2e["db"]), "--online", "--json"])
    assert audit_main(ns, backend=fake) == Exit.OK
    ok = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in ok["checks"] if c["kind"] == "wandb"} == {"ok"}
    assert len([c for c in ok["checks"] if c["kind"] == "wandb"]) == 11  # every file's md5 against W&B's manifest
    onnx = e2e["arts"]["onnx"]
    project = e2e["runs"]["export-onnx"].wandb_project
    assert fake.calls[0] == ("check",)
    assert ("lookup_artifact", wandb_ref(None, project, onnx.name, onnx.digest)) in fake.calls
    assert len(fake.calls) == 1 + 6  # check, then one lookup per artifact in the picture (the report too)

    # W&B holds other bytes under the same sha256 alias: the audit fails and says so
    artifacts[f"convnet-onnx:sha256-{onnx.digest[:16]}"]["files"]["model.onnx"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    artifacts[f"convnet:sha256-{e2e['arts']['model'].digest[:16]}"]["logged_by"] = "someoneelse1"
    bad = apply_wandb_findings(audit(e2e["store"], str(e2e["onnx"])),
                               {lab: RecordingWandb(artifacts=artifacts).lookup_artifact(
                                   f"{project}/{a.name}:{a.wandb_alias}")
                                for lab, a in report.artifacts.items()})
    assert bad.exit_code == Exit.VERIFY_FAILED
    details = " / ".join(c.detail for c in bad.failures)
    assert "differs from W&B's copy" in details and "W&B says it was logged by run someoneelse1" in details
    assert "W&B (online)" in render_tree(bad)

    # not uploaded yet: noted, not a failure
    unsynced = apply_wandb_findings(audit(e2e["store"], str(e2e["onnx"])), {lab: None for lab in report.artifacts})
    assert unsynced.exit_code == Exit.OK
    assert "not in W&B (offline run not synced yet" in render_tree(unsynced)


# --------------------------------------------------------------------------------------------- the walk, in small


def _stage(store, tmp_path, run_id, job, used, outputs):
    """Record one run on a real store with real files: outputs = [(name, type, content)]."""
    store.start_run(run_id, job, config={}, env={"seed": 0}, flow_run_id="f", run_group="g", wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)
    produced = []
    for name, type_, content in outputs:
        tmp = tmp_path / "staging" / run_id / name
        tmp.mkdir(parents=True)
        (tmp / "x.bin").write_text(content)
        files = manifest(tmp)
        digest = manifest_digest(files)
        final = tmp_path / "art" / type_ / name / digest[:16]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)
        meta = {"files": {f.relpath: f.sha256 for f in files},
                "inputs": [{"name": u.name, "digest": u.digest} for u in used]}
        produced.append(NewArtifact(name, type_, digest, str(final), meta, files))
    return store.finish_run(run_id, used=[u.artifact_id for u in used], produced=produced, summary={},
                            wandb_url=None, wandb_mode="offline")


def test_forward_walk_keeps_what_is_about_this_artifact_only(tmp_path):
    store = LineageStore(tmp_path / "l.db")
    [d] = _stage(store, tmp_path, "prep", "prepare-data", [], [("data", "dataset", "d")])
    [m1] = _stage(store, tmp_path, "train1", "train", [d], [("model", "model", "m1")])
    [m2] = _stage(store, tmp_path, "train2", "train", [d], [("model", "model", "m2")])  # another model
    [o1] = _stage(store, tmp_path, "exp1", "export-onnx", [m1], [("onnx", "onnx", "o1")])
    [o2] = _stage(store, tmp_path, "exp2", "export-onnx", [m1], [("onnx", "onnx", "o2")])  # a sibling export
    [v1] = _stage(store, tmp_path, "val1", "validate-onnx", [o1, m1, d], [("val", "validation", "v1")])
    _stage(store, tmp_path, "val2", "validate-onnx", [o2, m1, d], [("val", "validation", "v2")])
    [e1] = _stage(store, tmp_path, "eval1", "evaluate", [m1, d], [("metrics", "metrics", "e1")])
    _stage(store, tmp_path, "eval2", "evaluate", [m2, d], [("metrics", "metrics", "e2")])

    r = audit(store, "onnx:v0")
    assert r.exit_code == Exit.OK
    assert tree_chain(as_json(r.upstream[0])) == ["artifact:onnx:v0", "run:exp1", "artifact:model:v0",
                                                  "run:train1", "artifact:data:v0", "run:prep"]
    assert [x.run for x in r.downstream] == ["val1", "eval1"]
    assert set(r.artifacts) == {"onnx:v0", "model:v0", "data:v0", "val:v0", "metrics:v0"}

    m = audit(store, "model:v0")  # from the model: both exports, both validations, its evaluation; not train2
    assert sorted(x.run for x in m.downstream) == ["eval1", "exp1", "exp2", "val1", "val2"]
    assert "model:v1" not in m.artifacts
    g = render_mermaid(m)
    assert g.count(" --> ") == len(m.edges) == 3 + 2 * 2 + 2 * 4 + 3  # upstream, exports, validations, eval

    dataset = audit(store, "data:v0")  # from the dataset: everything made from it
    assert sorted(x.run for x in dataset.downstream) == ["eval1", "eval2", "exp1", "exp2", "train1",
                                                           "train2", "val1", "val2"]
    assert {"onnx:v1", "model:v1", "metrics:v1"} <= set(dataset.artifacts)
    assert (o1.version, v1.version, e1.version) == (0, 0, 0)


def test_a_run_the_store_no_longer_holds_is_shown_as_missing_with_its_edges(tmp_path):
    """A store damaged by hand (a producing run's row deleted with SQLite's foreign keys off): the walk still
    follows the run's edges, and the report names the run with job type "?" and status "missing"."""
    store = LineageStore(tmp_path / "l.db")
    [d] = _stage(store, tmp_path, "prep", "prepare-data", [], [("data", "dataset", "d")])
    [m] = _stage(store, tmp_path, "train1", "train", [d], [("model", "model", "m")])
    con = sqlite3.connect(tmp_path / "l.db")
    try:
        con.execute("DELETE FROM runs WHERE run_id = 'train1'")
        con.commit()
    finally:
        con.close()

    r = audit(LineageStore(tmp_path / "l.db"), "model:v0")
    gone, prep = r.runs["train1"], r.runs["prep"]
    assert (gone.job_type, gone.status, gone.started_at, gone.config, gone.wandb.mode) == ("?", "missing", None, {},
                                                                                            None)
    assert gone.code.git_commit is None and gone.used == ["data:v0"] and gone.produced == ["model:v0"]
    assert (prep.job_type, prep.status, prep.wandb.mode) == ("prepare-data", "finished", "offline")
    assert tree_chain(as_json(r.upstream[0])) == ["artifact:model:v0", "run:train1", "artifact:data:v0", "run:prep"]
    assert "train1" in render_tree(r) and m.version == 0
