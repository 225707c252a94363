"""`mnist-pipeline sync`: the offline side for real (a real end-to-end run, its offline wandb run folders and
lineage store), the W&B calls at the boundary (a recording fake: which calls, in which order, with which refs),
idempotency through the store, and the 'no reachable W&B' failure for real."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import _parser, main
from prefect_wandb.audit import audit
from prefect_wandb.audit.render import render_tree
from prefect_wandb.cli.audit import sync_main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.recording import RecordingWandb
from prefect_wandb.refs import digest_alias, wandb_ref
from prefect_wandb.store import LineageStore
from prefect_wandb.sync import plan_sync
from prefect_wandb.wandb.client import WandbClient, WandbUnavailable
from prefect_wandb.wandb.run_file import offline_records, synced_marker
from tests.helpers import copy_sqlite, free_port


@pytest.fixture
def e2e(offline_run):
    """The session's tiny offline run (conftest): its flow promoted its model."""
    return offline_run


@pytest.fixture
def db(e2e, tmp_path) -> Path:
    """A private copy of the run's lineage store (same artifact files and offline run folders)."""
    return copy_sqlite(e2e["db"], tmp_path / "lineage.db")


def _dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _sync(db: Path, backend, *args) -> int:
    return sync_main(_parser().parse_args(["sync", "--lineage-db", str(db), *args]), backend=backend)


def _expected_calls(store: LineageStore) -> list[tuple]:
    """What a first sync must send, derived from the store: uploads in run order, then each run's inputs, then
    the promotions."""
    runs = [r for r in store.runs() if r.wandb_mode == "offline" and r.status != "running"]
    calls = [("check",)]
    for r in runs:
        calls += [("run_exists", f"{r.wandb_project}/{r.run_id}"),
                  ("upload", r.wandb_dir, None, r.wandb_project)]
    for r in runs:
        used = store.edges(r.run_id).used
        if used:
            path = f"{r.wandb_project}/{r.run_id}"
            calls += [("run_inputs", path),
                      ("declare_inputs", path, tuple(wandb_ref(None, r.wandb_project, u.name, u.digest)
                                                     for u in used))]
    for p in store.promotions():
        art = store.artifact(p.artifact_id)
        aliases = ("candidate", "production") if p.decision == "promoted" else ("candidate",)
        calls.append(("add_aliases", wandb_ref(None, "mnist-lineage", art.name, art.digest), aliases))
    return calls


# --------------------------------------------------------------------------------------------- the plan


def test_the_plan_comes_from_the_store_and_the_offline_run_folders(e2e, db):
    store = LineageStore(db)
    plan = plan_sync(store)
    runs = {r.run_id: r for r in plan.runs}
    assert set(runs) == {r.run_id for r in store.runs()}
    for rid, r in runs.items():
        [up, *uses] = r.actions
        assert up.action == "upload" and up.status == "pending"
        assert Path(up.ref).name.endswith(rid) and (Path(up.ref) / f"run-{rid}.wandb").is_file()
        assert [u.ref for u in uses] == [wandb_ref(None, "mnist-lineage", a.name, a.digest)
                                         for a in store.edges(rid).used]
    train = runs[e2e["runs"]["train"].run_id]
    dataset = e2e["arts"]["dataset"]
    # the same exact-version ref that an online Stage.use declares
    assert [a.ref for a in train.actions[1:]] == [f"mnist-lineage/{dataset.name}:{digest_alias(dataset.digest)}"]

    # every ref names an alias that the producing run's offline file logs, so it resolves once uploaded
    for r in plan.runs:
        for a in r.actions[1:]:
            producer = store.run(a.producer_run_id)
            recs = list(offline_records(next(Path(producer.wandb_dir).glob("run-*.wandb"))))
            logged = {(x.artifact.name, alias) for x in recs if x.WhichOneof("record_type") == "artifact"
                      for alias in x.artifact.aliases}
            name, alias = a.ref.rsplit("/", 1)[1].split(":")
            assert (name, alias) in logged, a.ref
    [promo] = plan.promotions
    model = e2e["arts"]["model"]
    assert promo.ref == f"mnist-lineage/convnet:sha256-{model.digest[:16]}"
    assert promo.aliases == ["candidate", "production"]


def test_moved_run_folders_are_found_with_wandb_dir(e2e, db, capsys):
    con = sqlite3.connect(db)
    con.execute("UPDATE runs SET wandb_dir = '/nonexistent/' || run_id")
    con.commit()
    con.close()
    fake = RecordingWandb()
    assert _sync(db, fake) == Exit.FAILED
    out = capsys.readouterr()
    assert "upload /nonexistent/" in out.out and "missing (offline run folder not found" in out.out
    assert f"on {socket.gethostname()}: run `sync` there)" in out.out  # the host whose folder it was
    assert "blocked (the run itself is not in W&B)" in out.out and "some steps failed or were blocked" in out.err
    assert [c[0] for c in fake.calls] == ["check"]
    assert LineageStore(db).sync_log() == []

    fake = RecordingWandb()
    assert _sync(db, fake, "--wandb-dir", str(e2e["base"] / "wandb")) == Exit.OK
    uploads = [c[1] for c in fake.calls if c[0] == "upload"]
    assert len(uploads) == len(LineageStore(db).runs())
    assert all(Path(u).parent.parent == e2e["base"] / "wandb" for u in uploads)


# --------------------------------------------------------------------------------------------- the calls


def test_sync_sends_uploads_then_inputs_then_promotions_with_exact_refs(e2e, db, capsys):
    store = LineageStore(db)
    expected = _expected_calls(store)
    fake = RecordingWandb()
    assert _sync(db, fake) == Exit.OK
    assert fake.calls == expected
    kinds = [c[0] for c in fake.calls]
    assert max(i for i, k in enumerate(kinds) if k == "upload") < kinds.index("declare_inputs")
    runs = e2e["runs"]
    arts = e2e["arts"]
    declared = {c[1].split("/")[-1]: set(c[2]) for c in fake.calls if c[0] == "declare_inputs"}
    ref = {t: wandb_ref(None, "mnist-lineage", a.name, a.digest) for t, a in arts.items()}
    assert declared[runs["train"].run_id] == {ref["dataset"]}
    assert declared[runs["evaluate"].run_id] == {ref["dataset"], ref["model"]}
    assert declared[runs["export-onnx"].run_id] == {ref["model"]}
    assert declared[runs["validate-onnx"].run_id] == {ref["onnx"], ref["model"], ref["dataset"], ref["metrics"]}
    assert runs["prepare-data"].run_id not in declared  # it used nothing
    assert fake.calls[-1] == ("add_aliases", ref["model"], ("candidate", "production"))
    # the in-memory W&B now has what a real one would: the model version carries both aliases
    assert {"candidate", "production"} <= set(fake.artifacts[ref["model"].split("/")[-1]]["aliases"])

    # reported per run, and recorded in the store
    out = capsys.readouterr().out
    for r in store.runs():
        assert f"{r.job_type} run {r.run_id} [offline, finished]" in out
    assert f"use    {ref['dataset']} (mnist:v0): done (declared: use_artifact on the resumed run)" in out
    assert "OK: did" in out and ", 0 already done" in out
    log = store.sync_log()
    n_uses = sum(len(store.edges(r.run_id).used) for r in store.runs())
    assert sorted({r.action for r in log}) == ["upload", "use"]
    assert len([r for r in log if r.action == "upload"]) == len(store.runs())
    assert len([r for r in log if r.action == "use"]) == n_uses
    assert all(p.wandb_applied_at for p in store.promotions())


def test_a_second_sync_sends_nothing_and_creates_no_duplicates(db, capsys):
    first = RecordingWandb()
    assert _sync(db, first) == Exit.OK
    log = LineageStore(db).sync_log()
    capsys.readouterr()
    second = RecordingWandb()
    assert _sync(db, second) == Exit.OK
    assert second.calls == [("check",)]
    assert LineageStore(db).sync_log() == log
    out = capsys.readouterr().out
    assert "OK: did 0 step(s)" in out and "already done (uploaded" in out and "already done (declared" in out


def test_sync_does_not_duplicate_what_wandb_already_holds(e2e, db):
    """A store that never recorded a sync, against a W&B that already has everything (synced from another
    machine, or by hand): no upload (wandb issue #3962: re-syncing duplicates artifact versions), no second
    input edge, no alias change."""
    done = RecordingWandb()
    assert _sync(db, done) == Exit.OK
    fresh = copy_sqlite(e2e["db"], db.parent / "fresh.db")
    again = RecordingWandb(runs=done.runs, inputs=done.inputs, artifacts=done.artifacts)
    assert _sync(fresh, again) == Exit.OK
    assert {c[0] for c in again.calls} == {"check", "run_exists", "run_inputs", "add_aliases"}
    assert all(r.detail in ("already in W&B: not uploaded again (no duplicate versions)",
                               "already declared in W&B") for r in LineageStore(fresh).sync_log())


def test_runs_already_uploaded_by_wandb_sync_are_not_uploaded_again(e2e, db):
    run = e2e["runs"]["prepare-data"]
    marker = synced_marker(Path(run.wandb_dir))
    marker.touch()  # what `wandb sync` leaves beside a run file it uploaded
    try:
        fake = RecordingWandb()
        assert _sync(db, fake) == Exit.OK
    finally:
        marker.unlink()
    assert not [c for c in fake.calls if c[0] in ("run_exists", "upload") and run.run_id in str(c[1])]
    [row] = LineageStore(db).sync_log(run.run_id)
    assert row.action == "upload" and "marker" in (row.detail or "")


def test_a_failed_step_blocks_what_depends_on_it_and_the_next_sync_resumes(e2e, db, capsys):
    fake = RecordingWandb(fail={"declare_inputs": RuntimeError("W&B said 500")})
    assert _sync(db, fake) == Exit.FAILED
    captured = capsys.readouterr()
    assert "failed (RuntimeError: W&B said 500)" in captured.out and "INCOMPLETE" in captured.out
    store = LineageStore(db)
    assert {r.action for r in store.sync_log()} == {"upload"}  # uploads done and kept; no input recorded
    assert all(p.wandb_applied_at for p in store.promotions())  # the model version itself was uploaded

    retry = RecordingWandb(runs=fake.runs, artifacts=fake.artifacts)
    assert _sync(db, retry) == Exit.OK
    assert {c[0] for c in retry.calls} == {"check", "run_inputs", "declare_inputs"}

    failing_uploads = RecordingWandb(fail={"upload": RuntimeError("disk full")})
    other = copy_sqlite(e2e["db"], db.parent / "other.db")
    assert _sync(other, failing_uploads) == Exit.FAILED
    out = capsys.readouterr().out
    assert "blocked (the run itself is not in W&B)" in out and "blocked (its producing run" in out
    assert LineageStore(other).sync_log() == []
    assert not any(p.wandb_applied_at for p in LineageStore(other).promotions())


def test_dry_run_lists_the_calls_in_order_and_changes_nothing(db, capsys):
    before = _dump(db)
    assert main(["sync", "--lineage-db", str(db), "--dry-run", "--json"]) == Exit.OK
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] is True
    calls = [tuple(tuple(x) if isinstance(x, list) else x for x in c) for c in result["calls"]]
    assert calls == _expected_calls(LineageStore(db))
    assert _dump(db) == before
    assert main(["sync", "--lineage-db", str(db), "--dry-run"]) == Exit.OK
    out = capsys.readouterr().out
    assert out.startswith("DRY RUN (nothing sent, nothing recorded)") and "calls that would be sent, in order:" in out
    assert "would be done" in out and _dump(db) == before


# --------------------------------------------------------------------------------------------- no W&B


@pytest.fixture
def no_netrc(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def _unchanged(db: Path, e2e) -> tuple:
    return (_dump(db), db.stat().st_mtime_ns,
            sorted(p.name for p in (e2e["base"] / "wandb").rglob("*.synced")))


def test_without_an_api_key_sync_fails_clearly_and_changes_nothing(e2e, db, no_netrc, capsys):
    before = _unchanged(db, e2e)
    assert main(["sync", "--lineage-db", str(db)]) == Exit.WANDB_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("mnist-pipeline sync: no W&B API key for ") and err.count("\n") == 1
    assert "nothing was sent or changed" in err and "Traceback" not in err
    assert _unchanged(db, e2e) == before and before[2] == []
    with pytest.raises(WandbUnavailable, match="no W&B API key"):
        WandbClient().check()


def test_with_an_unreachable_host_sync_fails_clearly_and_changes_nothing(e2e, db, no_netrc, monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    before = _unchanged(db, e2e)
    assert main(["sync", "--lineage-db", str(db)]) == Exit.WANDB_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith(f"mnist-pipeline sync: W&B at http://127.0.0.1:{port} is unreachable (")
    assert err.count("\n") == 1 and _unchanged(db, e2e) == before
    # audit --online says the same, with the same exit code (W&B unreachable), and no partial report
    assert main(["audit", str(e2e["onnx"]), "--lineage-db", str(db), "--online"]) == Exit.WANDB_UNAVAILABLE
    captured = capsys.readouterr()
    assert "--online: W&B at" in captured.err and captured.out == ""


# --------------------------------------------------------------------------------------------- the audit sees it


def test_after_a_sync_the_audit_shows_it_and_the_online_cross_check_agrees(e2e, db, capsys):
    fake = RecordingWandb()
    assert _sync(db, fake) == Exit.OK
    capsys.readouterr()
    store = LineageStore(db)
    report = audit(store, str(e2e["onnx"]))
    train = report.runs[e2e["runs"]["train"].run_id]
    assert train.wandb.synced_at and train.wandb.inputs_declared == [
        wandb_ref(None, "mnist-lineage", "mnist", e2e["arts"]["dataset"].digest)]
    tree = render_tree(report)
    assert "not synced yet" not in tree and "applied in W&B" in tree

    fake.calls.clear()
    ns = _parser().parse_args(["audit", str(e2e["onnx"]), "--lineage-db", str(db), "--online", "--json"])
    from prefect_wandb.cli.audit import audit_main

    assert audit_main(ns, backend=fake) == 0
    online = json.loads(capsys.readouterr().out)["wandb_online"]
    model = online["convnet:v0"]
    assert model["found"] and model["logged_by"] == e2e["runs"]["train"].run_id
    assert set(model["used_by"]) >= {e2e["runs"][j].run_id for j in ("evaluate", "export-onnx", "validate-onnx")}
    assert "missing_input_edges" not in model
    assert [c[0] for c in fake.calls] == ["check"] + ["lookup_artifact"] * len(online)
