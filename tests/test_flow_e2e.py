"""The whole flow on tiny IDX data: real Prefect (test server, SQLite), real wandb (offline, temp dir)."""

import json
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import main
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
from prefect_wandb.refs import manifest_digest, verify_files
from prefect_wandb.store import LineageStore
from prefect_wandb.wandb.run_file import offline_records
from tests.helpers import STEMS, offline_run_argv

JOB_TYPES = {"prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote", "report"}


def _wandb_runs(wandb_dir):
    runs = {}
    for f in wandb_dir.rglob("offline-run-*/run-*.wandb"):
        recs = list(offline_records(f))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        arts = [(r.artifact.name, r.artifact.type, sorted(r.artifact.aliases)) for r in recs
                if r.WhichOneof("record_type") == "artifact" and r.artifact.type != "run_table"]
        runs[run.run_id] = (run.job_type, run.run_group, arts)
    return runs


def _chain(store, artifact, direction):
    """The runs that used (direction='used') or produced an artifact record."""
    return [store.run(r) for r in (store.consumers if direction == "used" else store.producers)(artifact.artifact_id)]


def test_pipeline_end_to_end(offline_run, wandb_offline, capsys):
    """The session's tiny offline run (`helpers.make_offline_run`: `mnist-pipeline run` in this process), then the
    same command again."""
    summary, store, wandb_dir = offline_run["summary"], offline_run["store"], offline_run["wandb_dir"]

    # the five stage runs (and the promotion decision's run) with the right job types, on disk for a later `wandb sync`, grouped by the flow run
    runs = _wandb_runs(wandb_dir)
    assert sorted(j for j, _, _ in runs.values()) == sorted(JOB_TYPES)
    assert len({g for _, g, _ in runs.values()}) == 1
    flow_runs = store.runs()
    assert {r.run_id for r in flow_runs} == set(runs) and all(r.status == "finished" for r in flow_runs)

    # every artifact's files exist and match the digests on record
    arts = {a.type: a for a in store.artifacts()}
    assert set(arts) == {"dataset", "model", "metrics", "onnx", "validation", "report"}
    for a in arts.values():
        verify_files(a.path, a.files)
        assert manifest_digest(a.files) == a.digest
        assert summary["artifacts"][a.type]["digest"] == a.digest
        job, _, logged = runs[a.producer_run_id]
        assert (a.name, a.type, ["latest", f"sha256-{a.digest[:16]}"]) in logged  # the same version in W&B

    # the chains: dataset -> train -> model -> evaluate -> metrics, model -> export -> onnx -> validate -> validation
    def step(art, job, out_type):
        [run] = [r for r in _chain(store, art, "used") if r.job_type == job]
        produced = store.edges(run.run_id).produced
        assert [p.type for p in produced] == [out_type]
        return run, produced[0]

    train_run, model = step(arts["dataset"], "train", "model")
    eval_run, metrics = step(model, "evaluate", "metrics")
    export_run, onnx_art = step(model, "export-onnx", "onnx")
    val_run, validation = step(onnx_art, "validate-onnx", "validation")
    assert {u.type for u in store.edges(eval_run.run_id).used} == {"model", "dataset"}
    # onnxruntime is checked against the logits the evaluation recorded: validation uses the metrics too
    assert {u.type for u in store.edges(val_run.run_id).used} == {"onnx", "model", "dataset", "metrics"}
    assert {f.relpath for f in metrics.files} == {"metrics.json", "logits.npy"}
    # the report reads the dataset (misclassified digits), metrics and validation; it shows the whole run
    report_run, report = step(validation, "report", "report")
    assert {u.type for u in store.edges(report_run.run_id).used} == {"dataset", "metrics", "validation"}
    assert summary["report"] == str(Path(report.path) / "report.html")
    page = Path(summary["report"]).read_text()
    assert all(f">{job}</text>" in page for job in JOB_TYPES) and page.count("data:image/png;base64,") == 4
    # the loss curve's points live in the training run's record, not in the model's files or metadata
    assert len(train_run.summary["loss_points"]) >= 1 and "loss_points" not in json.dumps(model.metadata)
    # ... and they are what W&B got (8 batches, logged every 4: after batches 3 and 7), not the final partial batch
    [train_file] = wandb_dir.rglob(f"offline-run-*-{train_run.run_id}/run-*.wandb")
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in offline_records(train_file) if r.WhichOneof("record_type") == "history"]
    logged = [(h["_step"], h["epoch"], round(h["loss"], 5)) for h in history if "loss" in h]
    assert [tuple(p) for p in train_run.summary["loss_points"]] == logged and [p[0] for p in logged] == [48, 112]
    # each output's metadata names its inputs with their sha256s
    assert {i["digest"] for i in onnx_art.metadata["inputs"]} == {model.digest}
    assert onnx_art.metadata["inputs"][0]["files"]["model.pt"] == next(
        f.sha256 for f in model.files if f.relpath == "model.pt")

    # every run records code, packages, seed and the flow run
    env = train_run.env
    assert env["seed"] == 0 and env["packages"]["torch"] and env["flow_run_id"] == train_run.flow_run_id
    assert "git_commit" in env and "git_dirty" in env
    assert train_run.config["train"]["epochs"] == 1

    # onnxruntime parity
    assert validation.metadata["passed"] and validation.metadata["max_abs_diff"] < 1e-3
    assert summary["onnx_argmax_agreement"] == 1.0 and summary["test_accuracy"] == metrics.metadata["test_accuracy"]
    assert arts["dataset"].metadata["sizes"] == {"train": 120, "test": 40}
    assert arts["dataset"].metadata["class_counts"]["train"] == [12] * 10

    # the first validated model is promoted, and the decision is on record
    assert store.alias("convnet", "production").artifact_id == model.artifact_id
    [decision] = store.promotions(model.artifact_id)
    assert decision.decision == "promoted" and decision.reason == "first validated model"
    assert summary["promotion"]["decision"] == "promoted"

    # the Prefect UI artifact lists the outputs with their digests
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [pa] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["mnist-lineage"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[train_run.flow_run_id])))
    assert all(a.digest[:16] in pa.data for a in arts.values())

    # an unchanged second run reuses the cached data preparation and skips training: nothing new is made
    assert main(offline_run_argv(offline_run["src"], offline_run["base"])) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["status"] == "skipped" and "unchanged since production convnet:v0" in second["reason"]
    assert second["artifacts"]["dataset"] == summary["artifacts"]["dataset"]
    jobs = [r.job_type for r in store.runs()]
    assert jobs.count("prepare-data") == 1 and jobs.count("train") == 1
    assert len(store.artifacts()) == len(arts)


def test_a_truncated_idx_file_fails_the_flow_naming_it_and_leaves_nothing_half_written(
        prefect_server, wandb_offline, tiny_mnist, tmp_path):
    bad = tiny_mnist / "MNIST" / "raw" / STEMS[("test", "images")]
    bad.write_bytes(bad.read_bytes()[:-10])
    cfg = PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 1}, "wandb": {"mode": "offline"},
        "artifacts_dir": str(tmp_path / "art"), "lineage_db": str(tmp_path / "lineage.db")})
    state = mnist_lineage_pipeline(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"{bad}: truncated IDX file"):
        state.result()
    store = LineageStore(tmp_path / "lineage.db")
    assert store.artifacts() == []
    [run] = store.runs()
    assert run.status == "failed" and "truncated IDX file" in run.error
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]  # no staged leftovers
