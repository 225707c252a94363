"""reproduce, impact, rollback and gc against real flow runs on tiny data: real Prefect (test server), real wandb
(offline, temp dir), real SQLite; the CLI's own entry point."""

import json
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from mnist_pipeline.cli.main import main
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
from prefect_wandb.exit_codes import Exit
from prefect_wandb.store import LineageStore
from tests.helpers import tiny_config, write_mnist

pytestmark = pytest.mark.slow


def _cfg(tmp_path, src, **train):
    return tiny_config(tmp_path, src, train={"watch": False, "threads": 2, **train})


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_forced_retrain_makes_the_same_model_and_onnx_and_a_skip_is_a_skipped_state(
        prefect_server, wandb_offline, tiny_mnist, tmp_path):
    store = LineageStore(tmp_path / "lineage.db")
    first = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist)).to_dict()
    state = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist), return_state=True)
    # a plain Completed state (Prefect's run filters go by state name: a custom one hides the run), saying why
    assert state.is_completed() and state.name == "Completed" and state.message.startswith("training skipped: ")
    skipped = state.result().to_dict()
    assert skipped["status"] == "skipped" and "--force" in skipped["reason"] and "set force" not in skipped["reason"]
    assert "the force field in the Prefect form" in skipped["reason"]  # what a UI user has instead of --force
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mnist-lineage"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert "mnist:v0 (dataset)" in table.data and "convnet:v0 (model)" in table.data  # not an empty header
    assert "(earlier run, reused)" in table.data
    forced = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist).model_copy(update={"force": True})).to_dict()
    for kind in ("model", "onnx", "metrics"):
        assert forced["artifacts"][kind]["digest"] == first["artifacts"][kind]["digest"], kind
    assert [a.version for a in store.artifacts("model")] == [0]  # no new version for the same bytes
    trains = [r for r in store.runs() if r.job_type == "train"]
    assert len(trains) == 2 and all(r.summary["threads"] == 2 and r.summary["train_seconds"] > 0
                                    for r in trains)  # how each run went is the run's record


def test_reproduce_impact_of_real_runs(prefect_server, wandb_offline, tiny_mnist, tmp_path, capsys):
    db = str(tmp_path / "lineage.db")
    first = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist)).to_dict()
    other_src = tmp_path / "other"
    write_mnist(other_src, n_train=100, n_test=40)
    second = mnist_lineage_pipeline(config=_cfg(tmp_path, other_src, learning_rate=0.01)).to_dict()
    store = LineageStore(db)

    # reproduce the ONNX file: train and export again, bit for bit
    onnx_file = first["artifacts"]["onnx"]["path"] + "/model.onnx"
    code, out, err = _cli(capsys, "reproduce", onnx_file, "--lineage-db", db, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "identical" and [c["artifact"] for c in res["comparisons"]] == ["convnet:v0",
                                                                                         "convnet-onnx:v0"]
    assert "trained on CPU with 2 intra-op thread(s)" in res["notes"]  # the recorded count
    code, out, err = _cli(capsys, "reproduce", "convnet-metrics:v0", "--lineage-db", db)
    assert code == 0 and "IDENTICAL" in out, err

    # a tampered record (the training config in the store) does not reproduce: the differing files are named
    model = store.find_artifact("convnet", first["artifacts"]["model"]["digest"])
    with sqlite3.connect(db) as con:
        cfg = json.loads(con.execute("SELECT config_json FROM runs WHERE run_id = ?",
                                     (model.producer_run_id,)).fetchone()[0])
        cfg["train"]["learning_rate"] = 0.02
        con.execute("UPDATE runs SET config_json = ? WHERE run_id = ?", (json.dumps(cfg), model.producer_run_id))
    code, out, err = _cli(capsys, "reproduce", "convnet:v0", "--lineage-db", db)
    assert code == 3 and "DIFFERS" in err and "convnet:v0/model.pt" in err and "model_config.json" in err

    # impact of the first dataset: its model (production? no: the second one won) and everything made from it
    code, out, err = _cli(capsys, "impact", "mnist:v0", "--lineage-db", db, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["derived"]["model"] == ["convnet:v0"] and rep["derived"]["onnx"] == ["convnet-onnx:v0"]
    prod = store.alias("convnet", "production")
    assert rep["production_affected"] == (prod.version == 0)
    code, out, _ = _cli(capsys, "impact", "mnist:v1", "--lineage-db", db, "--report", str(tmp_path / "i.html"))
    assert code == 0 and "convnet:v1 (model" in out and "convnet:v0 (model" not in out
    assert "<svg" in (tmp_path / "i.html").read_text()
    assert second["artifacts"]["model"]["ref"] == "convnet:v1"
    code, _, err = _cli(capsys, "impact", "nope:v9", "--lineage-db", db)
    assert code == 4 and "no such artifact version" in err


def test_rollback_twice_goes_back_to_the_first_model_refuses_bad_targets_and_gc_keeps_production_verified(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, capsys):
    db = str(tmp_path / "lineage.db")
    store = LineageStore(db)
    # three models, each better than the last: three production models in turn (v0, v1, v2)
    for train in ({"learning_rate": 1e-6}, {"learning_rate": 0.01}, {"learning_rate": 0.01, "epochs": 4}):
        assert mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist, **train)).to_dict()["promotion"]["decision"] == "promoted"
    # a fourth whose ONNX fails validation: it stays candidate and the flow fails
    bad = _cfg(tmp_path, tiny_mnist, learning_rate=0.005, epochs=2)
    bad = bad.model_copy(update={"onnx": bad.onnx.model_copy(update={"parity_atol": 1e-12})})
    assert mnist_lineage_pipeline(config=bad, return_state=True).is_failed()
    assert store.alias("convnet", "production").version == 2 and store.alias("convnet", "candidate").version == 3

    code, out, err = _cli(capsys, "rollback", "--lineage-db", db, "--reason", "drift seen", "--requested-by", "ops")
    assert code == 0, err
    assert "production convnet convnet:v2 -> convnet:v1" in out and store.alias("convnet", "production").version == 1
    code, out, err = _cli(capsys, "rollback", "--lineage-db", db, "--json")
    assert code == 0 and json.loads(out)["to"] == "convnet:v0", err
    assert store.alias("convnet", "production").version == 0  # back to the first
    last = store.promotions()[-1]
    assert last.decision == "promoted" and last.kind == "rollback" and last.reason.startswith(
        "rollback from convnet:v1 to convnet:v0")
    assert store.promotions()[-2].reason.endswith("requested by ops: drift seen")
    assert store.promotions()[-2].requested_by == "ops"
    code, _, err = _cli(capsys, "rollback", "--to", "convnet:v3", "--lineage-db", db)
    assert code == Exit.REFUSED and "REFUSED convnet:v3" in err and "failed onnxruntime validation" in err
    assert store.alias("convnet", "production").version == 0  # unmoved
    # offline, the rollback waits in the store for `sync`, which moves production alone (not candidate)
    from prefect_wandb.sync import plan_sync

    pending = [p for p in plan_sync(store).promotions if p.status != "done"]
    assert pending[-1].artifact == "convnet:v0" and pending[-1].aliases == ["production"]

    # gc: production (v0) and candidate (v3, also the newest) stay with their lineage; v1 and v2 may go
    art = tmp_path / "art"
    code, out, err = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", db, "--artifacts-dir", str(art),
                          "--json")
    assert code == 0, err
    plan = json.loads(out)
    gone = {r["artifact"] for r in plan["removals"] if r["kind"] == "artifact"}
    assert gone == {f"{n}:v{v}" for n in ("convnet", "convnet-metrics", "convnet-onnx", "convnet-onnx-validation",
                                          "run-report") for v in (1, 2)}
    assert plan["bytes_freed"] > 0 and all(os.path.isdir(r["path"]) for r in plan["removals"])
    code, out, err = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", db, "--artifacts-dir", str(art),
                          "--apply")
    assert code == 0, err
    assert "removed convnet:v1" in out and not any(os.path.exists(r["path"])
                                                   for r in plan["removals"])
    for ref in ("convnet:production", "convnet:candidate", "mnist:v0"):
        code, out, err = _cli(capsys, "audit", ref, "--lineage-db", db, "--skip-raw-files")
        assert code == 0 and "VERIFIED" in out + err, (ref, err)
    code, out, err = _cli(capsys, "audit", "convnet:v1", "--lineage-db", db, "--skip-raw-files")
    assert "deleted by gc on 20" in out and "missing" not in out.split("Checks")[0].lower()
    # v2's files went, its record and its dataset (production's) stayed: it can be remade, bit for bit
    code, out, err = _cli(capsys, "reproduce", "convnet-onnx:v2", "--lineage-db", db)
    assert code == 0 and "IDENTICAL" in out, err
    code, _, err = _cli(capsys, "rollback", "--to", "convnet:v2", "--lineage-db", db)
    assert code == Exit.REFUSED and "deleted by gc" in err
    # a second gc finds nothing more to remove
    code, out, _ = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", db, "--artifacts-dir", str(art), "--json")
    assert code == 0 and not [r for r in json.loads(out)["removals"] if r["kind"] == "artifact"]


def test_promotion_compares_accuracies_on_the_same_test_set_only(prefect_server, wandb_offline, tiny_mnist, tmp_path):
    store = LineageStore(tmp_path / "lineage.db")
    first = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist, learning_rate=0.01, epochs=4)).to_dict()
    other = tmp_path / "other"
    write_mnist(other, n_train=100, n_test=70)  # another test set: 70 images, not the same 40
    second = mnist_lineage_pipeline(config=_cfg(tmp_path, other, learning_rate=1e-6)).to_dict()
    d0, d1 = (store.find_artifact("mnist", r["artifacts"]["dataset"]["digest"]) for r in (first, second))
    assert d0.digest != d1.digest
    # production (convnet:v0) was evaluated again, on the candidate's test set, in an evaluate stage of its own
    prod_id = store.find_artifact("convnet", first["artifacts"]["model"]["digest"]).artifact_id
    [reeval] = [a for a in store.artifacts("metrics") if {(i["name"], i["digest"]) for i in a.metadata["inputs"]} == {
        ("convnet", first["artifacts"]["model"]["digest"]), ("mnist", d1.digest)}]
    assert reeval.metadata["producer"]["flow_run_id"] == store.run(
        store.find_artifact("convnet", second["artifacts"]["model"]["digest"]).producer_run_id).flow_run_id
    # recorded (in the store and in its W&B run's config) with the settings of the model it evaluates
    reeval_run = store.run(reeval.producer_run_id)
    assert reeval_run.config["train"]["learning_rate"] == 0.01 and reeval_run.config["train"]["epochs"] == 4
    from prefect_wandb.wandb.run_file import offline_records

    [run_file] = Path(reeval_run.wandb_dir).glob("run-*.wandb")
    [wb_config] = [r.run.config for r in offline_records(run_file) if r.WhichOneof("record_type") == "run"]
    wb = {item.key: json.loads(item.value_json) for item in wb_config.update}
    assert wb["learning_rate"] == 0.01 and wb["epochs"] == 4
    decision = store.promotions()[-1]
    assert decision.production_artifact_id == prod_id
    assert decision.production_value == pytest.approx(reeval.metadata["test_accuracy"])
    assert "re-evaluated on mnist:v1" in decision.reason and "candidate's test set" in decision.reason
    assert second["promotion"]["reason"] == decision.reason
    [promote_run] = [r for r in store.runs() if r.job_type == "promote" and r.flow_run_id == reeval.metadata[
        "producer"]["flow_run_id"]]
    assert reeval.artifact_id in {u.artifact_id for u in store.edges(promote_run.run_id).used}
    # a third model on that same dataset: production already has a measurement there; no second re-evaluation
    third = mnist_lineage_pipeline(config=_cfg(tmp_path, other, learning_rate=0.01, epochs=2)).to_dict()
    reevals = [a for a in store.artifacts("metrics") if ("convnet", first["artifacts"]["model"]["digest"]) in
               {(i["name"], i["digest"]) for i in a.metadata["inputs"]}]
    assert len(reevals) == 2  # its own evaluation on mnist:v0 and the one on mnist:v1, no third
    assert "on mnist:v1" in third["promotion"]["reason"] and "re-evaluated" not in third["promotion"]["reason"]


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def test_gc_while_a_flow_runs_removes_nothing_it_uses_or_makes(prefect_server, wandb_offline, tiny_mnist, tmp_path,
                                                               capsys):
    import subprocess
    import sys
    import time
    from pathlib import Path

    db, art = tmp_path / "lineage.db", tmp_path / "art"
    mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist))  # production convnet:v0 on mnist:v0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=_api_url(), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(
        Path(__file__).resolve().parents[1]))
    argv = [sys.executable, "-m", "mnist_pipeline.cli.main", "run", "--source", "synthetic", "--synthetic-train", "4000",
            "--synthetic-test", "100", "--slice", "1", "--epochs", "2", "--batch-size", "50", "--no-watch",
            "--threads", "1", "--wandb-mode", "offline", "--root", str(tmp_path / "data"), "--artifacts-dir",
            str(art), "--lineage-db", str(db), "--onnx-latency-samples", "10", "--onnx-throughput-batch", "16"]
    flow = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        store = LineageStore(db)
        deadline = time.monotonic() + 240
        while not [r for r in store.runs() if r.job_type == "train" and r.status == "running"]:
            assert flow.poll() is None, flow.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        [training] = [r for r in store.runs() if r.job_type == "train" and r.status == "running"]
        new_data = [a for a in store.artifacts("dataset") if a.version == 1]
        assert new_data, "the running flow's dataset is on record"
        code, out, err = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", str(db), "--artifacts-dir",
                              str(art), "--apply", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert flow.poll() is None, "gc must run while the flow does"
        assert "mnist:v1" in result["kept"] and not any("mnist/" in p for p in result["removed"])
        assert not any(training.run_id in p for p in result["removed"])  # its staging folder
        _, stderr = flow.communicate(timeout=300)
        assert flow.returncode == 0, stderr[-3000:]
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.communicate()
    # the flow's outputs are whole and on record
    store = LineageStore(db)
    for a in store.artifacts():
        if a.version == 1 and a.type in ("dataset", "model", "onnx"):
            code, out, err = _cli(capsys, "audit", f"{a.name}:v1", "--lineage-db", str(db), "--skip-raw-files")
            assert code == 0, (a.name, err)


def test_gc_between_a_cached_prepare_data_and_train_leaves_the_flows_dataset_alone(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, capsys, monkeypatch):
    """prepare-data a Prefect cache hit: no stage of the flow has declared the dataset when gc runs, right before
    train opens its stage. The flow holds it from the moment it resolved it, and lets go when it ends."""
    import importlib
    from contextlib import contextmanager

    from prefect_wandb import holds

    prepare_mod = importlib.import_module("mnist_pipeline.tasks.prepare_data")  # the modules, not their tasks
    train_mod = importlib.import_module("mnist_pipeline.tasks.train")

    db, art = tmp_path / "lineage.db", tmp_path / "art"
    mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist))  # production convnet:v0 on mnist:v0
    other = _cfg(tmp_path, tiny_mnist).model_copy(deep=True)
    other = PipelineConfig.model_validate({**other.model_dump(mode="json"), "data": {
        **other.data.model_dump(mode="json"), "slice": 2}})
    prepared = prepare_mod.prepare_data(other)  # mnist:v1, in Prefect's cache, made by no model yet
    assert prepared.label == "mnist:v1"
    gc_results = []
    real_open_stage = train_mod.pipeline_stage

    @contextmanager
    def gc_first(cfg, job_type, *args, **kwargs):
        code, out, err = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", str(db), "--artifacts-dir",
                              str(art), "--apply", "--json")
        gc_results.append((code, json.loads(out) if code == 0 else err))
        with real_open_stage(cfg, job_type, *args, **kwargs) as stage:
            yield stage

    monkeypatch.setattr(train_mod, "pipeline_stage", gc_first)
    state = mnist_lineage_pipeline(config=other, return_state=True)
    assert state.is_completed(), state.message
    [(code, result)] = gc_results
    assert code == 0, result
    assert "held by running flow run" in result["kept"]["mnist:v1"]
    assert not any("/mnist/" in p for p in result["removed"])
    store = LineageStore(db)
    assert [r.job_type for r in store.runs() if r.job_type == "prepare-data"] == ["prepare-data"] * 2  # a cache hit
    assert store.deletions() == {}
    assert holds.held(store) == {}  # released when the flow ended
    code, _, err = _cli(capsys, "audit", "mnist:v1", "--lineage-db", str(db), "--skip-raw-files")
    assert code == 0, err


def test_a_hold_of_a_process_that_is_gone_expires_and_gc_may_then_remove_it(tmp_path, capsys):
    from prefect_wandb import holds
    from prefect_wandb.environment import process_gone, process_identity
    from prefect_wandb.store import NewArtifact

    db, art = tmp_path / "lineage.db", tmp_path / "art"
    store = LineageStore(db)
    folder = art / "dataset" / "mnist" / ("ab" * 8)
    folder.mkdir(parents=True)
    (folder / "train.pt").write_bytes(b"x")
    store.start_run("r1", "prepare-data", config={}, env={}, flow_run_id="f1", run_group=None, wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)
    [rec] = store.finish_run("r1", used=[], produced=[NewArtifact("mnist", "dataset", "ab" * 32, str(folder), {}, ())],
                             summary={}, wandb_url=None, wandb_mode="offline")
    holds.hold(store, "f2", rec.artifact_id)
    assert not store.delete_artifact(rec.artifact_id, path=str(folder), bytes=1, reason="t", deleted_by="t",
                                     remove=lambda: None)  # held: refused in gc's own transaction
    assert holds.expire(store, process_gone) == []  # this process is alive
    with store.transaction() as con:  # the holding process died (a pid that cannot exist on this host)
        con.execute(text("UPDATE holds SET process_json = :p"), {"p": json.dumps({**process_identity(), "pid": 2 ** 22 + 7})})
    code, out, err = _cli(capsys, "gc", "--keep-last", "1", "--lineage-db", str(db), "--artifacts-dir", str(art),
                          "--apply", "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == [str(folder)] and holds.held(store) == {}
