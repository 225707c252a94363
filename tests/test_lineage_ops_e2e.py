"""reproduce, impact, rollback and gc against real flow runs on tiny data: real Prefect (test server), real wandb
(offline, temp dir), real SQLite; the CLI's own entry point."""

import json
import sqlite3

import pytest

from flows.cli import main
from flows.pipeline import mnist_pipeline
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.store import LineageStore
from tests.conftest import write_mnist

pytestmark = pytest.mark.slow


def _cfg(tmp_path, src, **train):
    return PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(src), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 1, "batch_size": 16, "watch": False, "threads": 2, **train},
        "wandb": {"mode": "offline"},
        "onnx": {"latency_samples": 10, "throughput_batch": 16, "timing_seconds": 0.05},
        "evaluate": {"misclassified_table_rows": 4},
        "artifacts_dir": str(tmp_path / "art"), "lineage_db": str(tmp_path / "lineage.db")})


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_forced_retrain_makes_the_same_model_and_onnx_and_a_skip_is_a_skipped_state(
        prefect_server, wandb_offline, tiny_mnist, tmp_path):
    store = LineageStore(tmp_path / "lineage.db")
    first = mnist_pipeline(config=_cfg(tmp_path, tiny_mnist))
    state = mnist_pipeline(config=_cfg(tmp_path, tiny_mnist), return_state=True)
    assert state.is_completed() and state.name == "Skipped"  # visibly skipped in run lists
    skipped = state.result()
    assert skipped["status"] == "skipped" and "--force" in skipped["reason"] and "set force" not in skipped["reason"]
    forced = mnist_pipeline(config=_cfg(tmp_path, tiny_mnist).model_copy(update={"force": True}))
    for kind in ("model", "onnx", "metrics"):
        assert forced["artifacts"][kind]["digest"] == first["artifacts"][kind]["digest"], kind
    assert [a.version for a in store.artifacts("model")] == [0]  # no new version for the same bytes
    trains = [r for r in store.runs() if r["job_type"] == "train"]
    assert len(trains) == 2 and all(r["summary"]["threads"] == 2 and r["summary"]["train_seconds"] > 0
                                    for r in trains)  # how each run went is the run's record


def test_reproduce_impact_of_real_runs(prefect_server, wandb_offline, tiny_mnist, tmp_path, capsys):
    db = str(tmp_path / "lineage.db")
    first = mnist_pipeline(config=_cfg(tmp_path, tiny_mnist))
    other_src = tmp_path / "other"
    write_mnist(other_src, n_train=100, n_test=40)
    second = mnist_pipeline(config=_cfg(tmp_path, other_src, learning_rate=0.01))
    store = LineageStore(db)

    # reproduce the ONNX file: train and export again, bit for bit
    onnx_file = first["artifacts"]["onnx"]["path"] + "/model.onnx"
    code, out, err = _cli(capsys, "reproduce", onnx_file, "--lineage-db", db, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "identical" and [c["artifact"] for c in res["comparisons"]] == ["convnet:v0",
                                                                                         "convnet-onnx:v0"]
    assert res["threads"] == 2
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
    assert code == 0 and "convnet:v1 (model" in out and "convnet:v0" not in out.split("Derived:")[0]
    assert "<svg" in (tmp_path / "i.html").read_text()
    assert second["artifacts"]["model"]["ref"] == "convnet:v1"
    code, _, err = _cli(capsys, "impact", "nope:v9", "--lineage-db", db)
    assert code == 4 and "no such artifact version" in err
