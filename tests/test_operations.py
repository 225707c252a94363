"""The pure logic of impact, gc, rollback and reproduce's comparison, on a lineage store built with its own API."""

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from prefect_wandb import GatePolicy, impact, promotion, retention, rollback
from prefect_wandb import reproduce as reproduction_plan
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import DeletionRecord, LineageStore, NewArtifact


class Lineage:
    """Runs and artifacts recorded the way stages record them: files in <type>/<name>/<digest16>, then one row set."""

    def __init__(self, tmp_path: Path, location: Path | str | None = None):
        self.root = tmp_path / "art"
        self.location = str(location or tmp_path / "lineage.db")  # a PostgreSQL URL with its password (CLI tests)
        self.store = LineageStore(self.location)
        self.n = 0

    def run(self, job_type: str, used=(), produce=(), status="finished", flow="f1", summary=None):
        self.n += 1
        run_id = f"{job_type}-{self.n}"
        self.store.start_run(run_id, job_type, config={"train": {"seed": 0}}, env={"seed": 0}, flow_run_id=flow,
                             run_group=None, wandb_mode="offline", wandb_dir=None, wandb_project="p",
                             wandb_entity=None)
        new = []
        for name, type_, content, meta in produce:
            staged = self.root / ".tmp" / f"{run_id}-{name}"
            staged.mkdir(parents=True)
            (staged / "f.bin").write_text(content)
            files = manifest(staged)
            digest = manifest_digest(files)
            final = self.root / type_ / name / digest[:16]
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                staged.rename(final)
            new.append(NewArtifact(name, type_, digest, str(final), dict(meta or {}), files))
        if status == "running":
            return run_id, []
        recs = self.store.finish_run(run_id, used=[u.artifact_id for u in used], produced=new,
                                     summary=summary or {}, wandb_url=None, wandb_mode="offline")
        return run_id, recs

    def pipeline(self, dataset, tag: str, passed=True, flow=None):
        """train -> evaluate, export -> validate, like one flow run on `dataset`."""
        flow = flow or f"flow-{tag}"
        _, [model] = self.run("train", [dataset], [("convnet", "model", f"weights {tag}", {})], flow=flow)
        _, [metrics] = self.run("evaluate", [model, dataset], [("convnet-metrics", "metrics", f"m {tag}",
                                                                 {"test_accuracy": 0.9})], flow=flow)
        _, [onnx] = self.run("export-onnx", [model], [("convnet-onnx", "onnx", f"onnx {tag}", {})], flow=flow)
        _, [val] = self.run("validate-onnx", [onnx, model, dataset],
                            [("convnet-onnx-validation", "validation", f"v {tag}", {"passed": passed})], flow=flow)
        return model, metrics, onnx, val

    def promote(self, model):
        return promotion.promote(self.store, model.artifact_id, value=0.9 + model.version / 100,
                                 validation_passed=True, policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0), flow_run_id=None)


@pytest.fixture
def lin(tmp_path, store_at):
    return Lineage(tmp_path, store_at)


def test_impact_of_a_dataset_names_its_models_their_exports_and_the_production_alias(lin):
    _, [d1] = lin.run("prepare-data", produce=[("mnist", "dataset", "d1", {})])
    _, [d2] = lin.run("prepare-data", produce=[("mnist", "dataset", "d2", {})])
    m1, _, _, v1 = lin.pipeline(d1, "a")
    lin.pipeline(d2, "b")
    lin.promote(m1)
    rep = impact.impact(lin.store, [d1])
    assert rep.derived == {"model": ["convnet:v0"], "metrics": ["convnet-metrics:v0"],
                           "onnx": ["convnet-onnx:v0"], "validation": ["convnet-onnx-validation:v0"]}
    assert rep.production_affected is True
    assert impact.AffectedAlias(alias="production", artifact="convnet:v0", name="convnet") in rep.aliases
    assert [p.decision for p in rep.promotions] == ["promoted"]
    text = impact.render_tree(rep)
    assert "convnet:v0 (model" in text and "[production, candidate]" in text and "PRODUCTION depends on it" in text
    assert "convnet:v1" not in text  # the other dataset's model is not derived from this one
    # the other dataset: derived models, but no production behind it
    other = impact.impact(lin.store, [d2])
    assert other.derived["model"] == ["convnet:v1"] and other.production_affected is False
    # a leaf has nothing derived
    assert impact.impact(lin.store, [v1]).derived == {}


def test_the_impact_page_escapes_what_the_records_say(lin):
    """The subject's name and a decision's reason holding markup show as text (Jinja2's autoescape)."""
    script, attr = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
    _, [d1] = lin.run("prepare-data", produce=[("mnist", "dataset", "d1", {})])
    lin.promote(lin.pipeline(d1, "a")[0])
    rep = impact.impact(lin.store, [d1])
    rep.subjects = [script]
    node = rep.tree[0].derived[0].produced[0]
    node.promotions[0] = replace(node.promotions[0], reason=attr)
    page = impact.render_html(rep)
    assert "<script" not in page.lower() and "<img" not in page and "onerror=alert(1)>" not in page
    assert "<title>Impact of &lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
    assert "derived from &lt;script&gt;alert(1)&lt;/script&gt;; PRODUCTION depends on it" in page
    assert ": &#34;&gt;&lt;img src=x onerror=alert(1)&gt;\n" in page  # the decision's line in the tree


def test_gc_keeps_aliases_newest_models_and_their_whole_lineage_and_removes_the_rest(lin):
    _, [d1] = lin.run("prepare-data", produce=[("mnist", "dataset", "d1", {})])
    _, [d2] = lin.run("prepare-data", produce=[("mnist", "dataset", "d2", {})])
    lin.run("prepare-data", produce=[("mnist", "dataset", "d3", {})])  # used by nothing
    old = lin.pipeline(d1, "old")
    lin.pipeline(d2, "mid")
    new = lin.pipeline(d2, "new")
    lin.promote(old[0])  # production: the oldest model, and its dataset d1
    (lin.root / ".staging" / "dead-run" / "convnet").mkdir(parents=True)
    (lin.root / ".staging" / "dead-run" / "convnet" / "x").write_bytes(b"x" * 100)
    orphan = lin.root / "model" / "convnet" / "0123456789abcdef"
    orphan.mkdir(parents=True)
    (orphan / "model.pt").write_bytes(b"y" * 10)
    (lin.root / ".checkpoints").mkdir()
    (lin.root / ".checkpoints" / "train-abc.pt").write_bytes(b"z" * 7)
    (lin.root / ".checkpoints" / "train-abc.pt.json").write_text("{}")  # its record
    (lin.root / ".checkpoints" / ".train-abc.pt.123-0a1b2c3d.partial").write_bytes(b"p")  # a write kill -9 cut

    plan = retention.plan(lin.store, lin.root, keep_last=1)
    gone = {r.artifact for r in plan.removals if r.kind == "artifact"}
    # production (old) and the newest model (new), with everything made from them and everything they came from
    for rec in (*old, *new, d1, d2):
        assert f"{rec.name}:v{rec.version}" in plan.kept
    assert gone == {"convnet:v1", "convnet-metrics:v1", "convnet-onnx:v1", "convnet-onnx-validation:v1", "mnist:v2"}
    kinds = {r.kind: r for r in plan.removals}
    assert kinds["unrecorded-folder"].path == str(orphan)
    assert kinds["staging"].path.endswith("dead-run")
    assert sorted(Path(r.path).name for r in plan.removals if r.kind == "checkpoint") == [
        ".train-abc.pt.123-0a1b2c3d.partial", "train-abc.pt", "train-abc.pt.json"]
    assert plan.bytes == sum(r.bytes for r in plan.removals) > 117
    # keep more models: the middle one and its outputs stay too
    assert {r.artifact for r in retention.plan(lin.store, lin.root, keep_last=2).removals
            if r.kind == "artifact"} == {"mnist:v2"}
    # nothing younger than a day goes
    assert not [r for r in retention.plan(lin.store, lin.root, keep_last=1, older_than_days=1).removals
                if r.kind == "artifact"]


def test_gc_keeps_the_model_rollback_would_go_back_to_and_says_so(lin, capsys):
    """`gc --keep-last 1 --apply` once deleted the previous production, and `rollback` then refused (exit 7)."""
    from mnist_pipeline.cli.main import main
    from prefect_wandb.exit_codes import Exit

    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    a, b, c = (lin.pipeline(d, t) for t in "abc")
    lin.promote(a[0])
    lin.promote(b[0])  # production b; before it a, what `rollback` goes back to; c is the newest model
    db = ["--lineage-db", lin.location, "--artifacts-dir", str(lin.root)]
    assert main(["gc", "--keep-last", "1", *db]) == Exit.OK
    out = capsys.readouterr().out
    assert "  keep convnet:v0: rollback target of production convnet:v1\n" in out, out
    assert "would remove convnet" not in out  # a and its exports and validation stay; b (alias) and c (newest) too
    assert main(["gc", "--keep-last", "1", "--apply", *db]) == Exit.OK
    capsys.readouterr()
    assert all(Path(r.path).is_dir() for r in a)
    assert main(["rollback", "--name", "convnet", "--dry-run", "--wandb-mode", "offline",
                 "--lineage-db", lin.location]) == Exit.OK
    assert "WOULD ROLL BACK: production convnet convnet:v1 -> convnet:v0" in capsys.readouterr().out
    # after that rollback, the production before v0 is none: v0's predecessor gone from the stack, v1 may go
    lin.store.record_rollback(a[0].artifact_id, reason="r", requested_by="t")
    plan = retention.plan(lin.store, lin.root, keep_last=1)
    assert not any("rollback target" in why for why in plan.kept.values())


def test_gc_keeps_what_a_running_flow_uses_and_has_made(lin):
    _, [d1] = lin.run("prepare-data", produce=[("mnist", "dataset", "d1", {})])
    m1, *_ = lin.pipeline(d1, "a")
    lin.promote(m1)
    # a new flow run: prepare-data made d2, train is running on it (its staging folder is in use)
    lin.run("prepare-data", produce=[("mnist", "dataset", "d2", {})], flow="live")
    run_id, _ = lin.run("train", status="running", flow="live")
    (lin.root / ".staging" / run_id / "convnet").mkdir(parents=True)
    plan = retention.plan(lin.store, lin.root, keep_last=1)
    assert "mnist:v1" in plan.kept and "running" in plan.kept["mnist:v1"]
    assert not any(r.path.endswith(run_id) for r in plan.removals)
    # a sweep trial at work on a worker: the store has not heard of its run yet, its folder's owner lives
    from prefect_wandb.leftovers import claim

    claim(lin.root / ".staging" / "trial-at-work", "trial-at-work", None)
    dead = lin.root / ".staging" / "trial-of-a-lost-worker"
    claim(dead, "trial-of-a-lost-worker", None)
    owner = json.loads((dead / ".owner.json").read_text())
    (dead / ".owner.json").write_text(json.dumps({**owner, "process": {**owner["process"], "start": -1}}))
    staged = {Path(r.path).name for r in retention.plan(lin.store, lin.root, keep_last=1).removals
              if r.kind == "staging"}
    assert "trial-at-work" not in staged and "trial-of-a-lost-worker" in staged


def test_rollback_walks_the_production_history_back_and_refuses_a_model_that_failed_validation(lin):
    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    a, b, c = (lin.pipeline(d, t)[0] for t in "abc")
    bad = lin.pipeline(d, "bad", passed=False)[0]
    for m in (a, b, c):
        lin.promote(m)
    current, prev = rollback.previous_production(lin.store, "convnet")
    assert (current.version, prev.version) == (2, 1)
    assert rollback.refusals(lin.store, b) == []
    assert "failed onnxruntime validation" in rollback.refusals(lin.store, bad)[0]
    # a rollback decision pops the stack: after c -> b, the previous one is a
    history = [SimpleNamespace(decision="promoted", artifact_id=m.artifact_id, kind=None) for m in (a, b, c)]
    history.append(SimpleNamespace(decision="promoted", artifact_id=b.artifact_id, kind="rollback"))
    names = {m.artifact_id: "convnet" for m in (a, b, c)}
    assert rollback.production_stack(history, names.get)["convnet"] == [a.artifact_id, b.artifact_id]
    # a tampered model file is refused too
    (Path(b.path) / "f.bin").write_text("swapped")
    assert "no longer verifies" in rollback.refusals(lin.store, b)[0]


def test_reproduce_compare_names_the_files_that_differ(lin, tmp_path):
    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    _, _, onnx, _ = lin.pipeline(d, "a")
    rebuild = dict.fromkeys(("train", "export-onnx", "evaluate"), lambda replay, out: None)
    recipe = reproduction_plan.plan_reproduction(lin.store, onnx, rebuild)
    assert [s.job_type for s in recipe.steps] == ["train", "export-onnx"]
    assert [r.artifact_id for r in recipe.roots] == [d.artifact_id]
    same = tmp_path / "same"
    same.mkdir()
    (same / "f.bin").write_text("onnx a")
    assert reproduction_plan.compare(onnx, same, manifest_digest(manifest(same))).identical
    (same / "f.bin").write_text("onnx b")
    (same / "extra.txt").write_text("new")
    c = reproduction_plan.compare(onnx, same, manifest_digest(manifest(same)))
    assert not c.identical and c.differing == ["extra.txt", "f.bin"]
    with pytest.raises(reproduction_plan.CannotReproduce, match="is a dataset"):
        reproduction_plan.plan_reproduction(lin.store, d, rebuild)
    # a recorded input that is gone is named
    (Path(d.path) / "f.bin").unlink()
    assert "is missing" in reproduction_plan.missing_inputs(recipe)[0]
    gone = DeletionRecord(d.artifact_id, d.path, 1, "unreferenced", "ops@host", "2026-01-02T00:00:00")
    assert "deleted by gc on 2026-01-02 by ops@host" in reproduction_plan.missing_inputs(recipe, {d.artifact_id: gone})[0]
    assert reproduction_plan.environment_differences({"git_commit": "a", "packages": {"torch": "1"}},
                                                {"git_commit": "b", "packages": {"torch": "2"}}) == [
        "code commit b differs from the recorded a", "package torch 2 differs from the recorded 1"]


def test_a_rollback_is_a_recorded_decision_that_moves_production_alone_and_pops_the_history(lin):
    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    a, b, c = (lin.pipeline(d, t)[0] for t in "abc")
    for m in (a, b, c):
        lin.promote(m)
    rec = lin.store.record_rollback(b.artifact_id, reason="rollback from convnet:v2 to convnet:v1", requested_by="me")
    assert (rec.kind, rec.requested_by, rec.aliases, rec.production_artifact_id) == (
        "rollback", "me", ["production", "candidate"], c.artifact_id)
    assert lin.store.alias("convnet", "production").artifact_id == b.artifact_id
    # candidate was on c, now rejected: it follows production to the rollback's target
    assert lin.store.alias("convnet", "candidate").artifact_id == b.artifact_id
    current, prev = rollback.previous_production(lin.store, "convnet")
    assert (current.artifact_id, prev.artifact_id) == (b.artifact_id, a.artifact_id)
    # a candidate elsewhere (a newer model the gate kept candidate) stays where it is
    d_ = lin.pipeline(d, "d")[0]
    lin.store.record_promotion(d_.artifact_id, lambda _: SimpleNamespace(decision="candidate", reason="worse",
                                                                         production_value=None),
                               value=None, validation_passed=True, margin=0.0, flow_run_id=None)
    assert lin.store.record_rollback(a.artifact_id, reason="r", requested_by="me").aliases == ["production"]
    assert lin.store.alias("convnet", "candidate").artifact_id == d_.artifact_id


def test_gc_never_deletes_an_input_in_use_and_a_deleted_input_is_refused_then_audited_as_deleted(lin):
    from prefect_wandb.audit import audit
    from prefect_wandb.store import ArtifactDeleted

    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    _, [other] = lin.run("prepare-data", produce=[("mnist", "dataset", "other", {})])
    # a running stage opened `d`: gc's transaction sees the edge and leaves it alone
    lin.store.start_run("live", "train", config={}, env={}, flow_run_id="f-live", run_group=None,
                        wandb_mode="offline", wandb_dir=None, wandb_project=None, wandb_entity=None)
    lin.store.record_use("live", d.artifact_id)
    removed = []
    assert not lin.store.delete_artifact(d.artifact_id, path=d.path, bytes=1, reason="x", deleted_by="t",
                                         remove=lambda: removed.append(d.path))
    assert removed == [] and lin.store.deletions() == {}
    # `other` is free: recorded as deleted with its folder gone, in one transaction ...
    gone = Path(other.path)
    assert lin.store.delete_artifact(other.artifact_id, path=other.path, bytes=9, reason="unreferenced",
                                     deleted_by="gc test", remove=lambda: __import__("shutil").rmtree(gone))
    assert not gone.exists() and lin.store.deletions()[other.artifact_id].deleted_by == "gc test"
    # ... and once the run is over, a remove that fails rolls the record back
    lin.store.finish_run("live", used=[], produced=[], summary={}, wandb_url=None, wandb_mode="offline")

    def fail():
        raise OSError("read-only")

    with pytest.raises(OSError, match="read-only"):
        lin.store.delete_artifact(d.artifact_id, path=d.path, bytes=1, reason="x", deleted_by="t", remove=fail)
    assert d.artifact_id not in lin.store.deletions()
    # a later stage that tries to use the deleted one is refused, by name and date
    lin.store.start_run("late", "train", config={}, env={}, flow_run_id=None, run_group=None,
                        wandb_mode="offline", wandb_dir=None, wandb_project=None, wandb_entity=None)
    with pytest.raises(ArtifactDeleted, match=r"mnist:v1 .* was deleted by gc on 20"):
        lin.store.record_use("late", other.artifact_id)
    report = audit(lin.store, "mnist:v1")
    assert report.exit_code == 0 and report.artifacts["mnist:v1"].status == "deleted"
    assert [c.status for c in report.checks if c.kind == "artifact-file"] == ["deleted"]
    assert "deleted by gc on 20" in report.checks[0].detail and "deleted by gc" in report.message



def test_rollback_cli_online_moves_the_wandb_alias_and_offline_leaves_it_to_sync(lin, capsys):
    import argparse

    from prefect_wandb.cli import aliases as ops_cli
    from prefect_wandb.recording import RecordingWandb

    _, [d] = lin.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    a, b = (lin.pipeline(d, t)[0] for t in "ab")
    lin.promote(a)
    lin.promote(b)

    def ns(**kw):
        base = {"command": "rollback", "to": None, "name": "convnet", "reason": "", "requested_by": "cron job 7",
                "lineage_db": lin.location, "wandb_mode": "offline", "dry_run": False, "json": True}
        return argparse.Namespace(**{**base, **kw})

    assert ops_cli.rollback_main(ns(dry_run=True)) == 0  # says what it would do, records nothing
    assert json.loads(capsys.readouterr().out)["status"] == "would roll back"
    assert lin.store.alias("convnet", "production").artifact_id == b.artifact_id
    backend = RecordingWandb(artifacts={  # W&B as the promotions left it: v1 is production
        f"convnet:sha256-{a.digest[:16]}": {"version": "v0", "aliases": ["latest"], "logged_by": "r", "used_by": []},
        f"convnet:sha256-{b.digest[:16]}": {"version": "v1", "aliases": ["candidate", "production"],
                                            "logged_by": "r", "used_by": []}})
    assert ops_cli.rollback_main(ns(wandb_mode="online"), backend=backend) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["to"] == "convnet:v0" and out["wandb"] == "production and candidate aliases moved"
    assert out["candidate"] == "convnet:v0"  # it was on the model rolled back from, now rejected
    assert ("add_aliases", f"(default entity)/p/convnet:sha256-{a.digest[:16]}",
            ("production", "candidate")) in backend.calls
    arts = backend.artifacts
    assert arts[f"convnet:sha256-{a.digest[:16]}"]["aliases"] == ["latest", "production", "candidate"]
    assert arts[f"convnet:sha256-{b.digest[:16]}"]["aliases"] == []  # both moved off the rejected model
    assert lin.store.promotions()[-1].wandb_applied_at is not None  # sync has nothing left to do for it
    # offline: recorded, and pending for sync; nothing before v0 to roll back to
    assert ops_cli.rollback_main(ns(to="convnet:v1")) == 0
    assert lin.store.promotions()[-1].wandb_applied_at is None
    capsys.readouterr()
    assert ops_cli.rollback_main(ns(to="convnet:v1")) == 2  # already production
    assert "already production" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"this is not an SQLite database, it was overwritten" * 100])
def test_the_operators_commands_on_an_empty_or_damaged_store_say_so_in_one_line(tmp_path, capsys, content):
    """reproduce, impact, rollback and gc open the store as audit and sync do: one line naming the file, exit 6,
    and the read-only ones (impact, reproduce) leave the file as it was."""
    from mnist_pipeline.cli.main import main
    from prefect_wandb.exit_codes import Exit

    db = tmp_path / "lineage.db"
    art = tmp_path / "artifacts"
    art.mkdir()
    for argv in (["impact", "convnet:v0"], ["reproduce", "convnet:v0"], ["rollback", "--dry-run"],
                 ["gc", "--artifacts-dir", str(art)]):
        db.write_bytes(content)
        assert main([*argv, "--lineage-db", str(db)]) == Exit.STORE, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(db) in err and "Traceback" not in err, err
        if argv[0] in ("impact", "reproduce"):
            assert db.read_bytes() == content  # never written


def _claim_dead(staging: Path, run_id: str, wandb_run_dir: Path | None) -> None:
    """A staging folder claimed by a process that has ended (this pid, another start time: a reused pid)."""
    from prefect_wandb.leftovers import OWNER, claim

    claim(staging, run_id, str(wandb_run_dir) if wandb_run_dir else None)
    owner = json.loads((staging / OWNER).read_text())
    (staging / OWNER).write_text(json.dumps({**owner, "process": {**owner["process"], "start": -1}}))


def test_an_ended_stage_leaves_no_staging_folder_and_no_w_and_b_run_the_store_never_recorded(lin, tmp_path):
    from prefect_wandb.leftovers import claim, remove_abandoned

    wandb_root = tmp_path / "wandb-root"
    recorded, _ = lin.run("train", status="failed")
    runs = {"lost": "a1b2c3d4e5f6", "recorded": recorded, "elsewhere": "0f0f0f0f0f0f"}
    folders = {k: wandb_root / "wandb" / f"offline-run-20261203_070000-{rid}" for k, rid in runs.items()}
    folders["elsewhere"] = tmp_path / "not-wandb" / f"offline-run-20261203_070000-{runs['elsewhere']}"
    for k, rid in runs.items():
        folders[k].mkdir(parents=True)
        _claim_dead(lin.root / ".staging" / rid, rid, folders[k])
    claim(lin.root / ".staging" / "alive0000000", "alive0000000", None)  # a stage at work in this process
    removed = remove_abandoned(lin.root, lin.store, wandb_root)
    assert sorted(removed) == sorted(runs.values())
    assert [p.name for p in (lin.root / ".staging").iterdir()] == ["alive0000000"]
    # the lost run's W&B folder went (`wandb sync` would upload a run the store has no record of); the recorded
    # run's stays for `mnist-pipeline sync`; nothing outside the W&B folder is touched, whatever the owner file says
    assert not folders["lost"].exists() and folders["recorded"].is_dir() and folders["elsewhere"].is_dir()


def _owner_file(staging: Path, run_id: str, process: dict, temp: list[Path]) -> None:
    """A staging folder whose owner recorded wandb's temporary folders `temp` as they are now."""
    import os

    staging.mkdir(parents=True)
    rec = [{"path": str(p), "dev": os.lstat(p).st_dev, "ino": os.lstat(p).st_ino} for p in temp]
    (staging / ".owner.json").write_text(json.dumps({"run_id": run_id, "process": process, "wandb_run_dir": None,
                                                     "wandb_temp": rec}))


def test_wandb_temporary_folders_of_an_ended_process_go_and_nobody_elses(lin, tmp_path, monkeypatch):
    """wandb's `tmp…wandb-media` / `tmp…wandb-artifacts` of a stage's process killed -9 stayed in $TMPDIR forever
    (issue 30, item 9): the owner's record of them lets the next stage and gc remove them, only them, only when that
    process has provably ended, and only while they are the very folders it recorded."""
    import os

    from prefect_wandb.environment import process_identity
    from prefect_wandb.leftovers import remove_abandoned

    tmp = tmp_path / "tmp"
    dead_media, dead_art, alive_media = (tmp / n for n in ("tmpdead0001wandb-media", "tmpdead0002wandb-artifacts",
                                                            "tmpalive001wandb-media"))
    renewed, other = tmp / "tmpdead0003wandb-media", tmp / "precious"  # another folder by that name; not wandb's
    for d in (dead_media, dead_art, alive_media, renewed, other):
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"x" * 10)
    me = process_identity()
    ended = {**me, "start": -1}  # this pid, another start time: a process that has ended (the pid reused)
    _owner_file(lin.root / ".staging" / "deadrun00001", "deadrun00001", ended, [dead_media, dead_art, renewed,
                                                                                other])
    _owner_file(lin.root / ".staging" / "deadrun00002", "deadrun00002", ended, [dead_media])  # its other stage
    _owner_file(lin.root / ".staging" / "alive0000001", "alive0000001", me, [alive_media])
    _owner_file(lin.root / ".staging" / "elsewhere001", "elsewhere001", {**ended, "host": "another-host",
                                                                         "lease_expires_at": "2000-01-01"}, [])
    rec = json.loads((lin.root / ".staging" / "deadrun00001" / ".owner.json").read_text())
    rec["wandb_temp"][2]["ino"] += 1  # what it recorded by that name was another folder (device, inode)
    (lin.root / ".staging" / "deadrun00001" / ".owner.json").write_text(json.dumps(rec))
    # a process killed between two stages: no staging folder of it is left, only its record in $TMPDIR
    between, alive_art = tmp / "tmpdead0004wandb-artifacts", tmp / "tmpalive002wandb-artifacts"
    for d in (between, alive_art):
        d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead_rec, live_rec = tmp / "prefect-wandb-process-1-dead.json", tmp / "prefect-wandb-process-2-live.json"
    for rec_file, proc, folders in ((dead_rec, ended, [between]), (live_rec, me, [alive_art])):
        rec_file.write_text(json.dumps({"process": proc, "wandb_temp": [
            {"path": str(p), "dev": os.lstat(p).st_dev, "ino": os.lstat(p).st_ino} for p in folders]}))
    # gc's plan names them, with the staging folders and the record that recorded them
    plan = retention.plan(lin.store, lin.root, keep_last=1)
    assert sorted(r.path for r in plan.removals if r.kind == "wandb-temp") == sorted(
        [str(dead_media), str(dead_art), str(between), str(dead_rec)])
    # the next stage removes them
    removed = remove_abandoned(lin.root, lin.store, tmp_path / "wandb")
    assert sorted(removed) == ["deadrun00001", "deadrun00002", "elsewhere001"]
    assert not dead_media.exists() and not dead_art.exists() and not between.exists()
    assert alive_media.is_dir() and renewed.is_dir() and (other / "f").is_file() and alive_art.is_dir()
    assert not dead_rec.exists() and live_rec.is_file()


@pytest.mark.slow  # a stage in a process of its own, killed -9
@pytest.mark.parametrize("when", ["in a stage", "between stages"])
def test_a_process_killed_minus_9_leaves_no_wandb_temporary_folder_after_the_next_clean_up(tmp_path, when):
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect_wandb.leftovers import remove_abandoned

    tmp, art = tmp_path / "tmp", tmp_path / "art"
    tmp.mkdir()
    code = ("import sys, time; from prefect_wandb import LineageSettings, WandbSettings, open_stage\n"
            f"s = LineageSettings(store={str(tmp_path / 'lineage.db')!r}, artifacts={str(art)!r}, "
            f"wandb=WandbSettings(project='p', mode='offline', dir={str(tmp_path / 'wandb')!r}))\n"
            + ("with open_stage(s, 'train'):\n    print('in', flush=True); time.sleep(120)\n" if when == "in a stage"
               else "with open_stage(s, 'train'):\n    pass\nprint('in', flush=True); time.sleep(120)\n"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "TMPDIR": str(tmp),
           "WANDB_SILENT": "true", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "in\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    left = sorted(p.name for p in tmp.iterdir() if "wandb-" in p.name and p.name.startswith("tmp"))
    assert sorted(n[11:] for n in left) == ["wandb-artifacts", "wandb-media"]  # what kill -9 leaves
    deadline = time.monotonic() + 30  # wandb-core, watching its parent, ends by itself
    while [p for p in tmp.iterdir() if p.name.startswith("wandb-")] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("prefect-wandb-process-")]  # its record of them
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))  # the next stage on this host, with the same $TMPDIR
        removed = remove_abandoned(art, LineageStore(tmp_path / "lineage.db"), tmp_path / "wandb")
    assert not [p for p in tmp.iterdir()], sorted(p.name for p in tmp.iterdir())  # nothing of it in $TMPDIR
    assert len(removed) == (1 if when == "in a stage" else 0)  # a finished stage's folder went with the stage
    assert not list((art / ".staging").iterdir())
