"""Sweeps on a real Dask cluster: a scheduler and two worker processes started by the test, on loopback; real
Prefect (test server), real wandb (offline, temp dir), SQLite (PostgreSQL and S3 in one test), onnxruntime."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import main
from mnist_pipeline.config import PipelineConfig
from prefect_wandb.refs import manifest_digest, verify_files
from prefect_wandb.store import LineageStore
from tests.dask_cluster import DaskCluster
from tests.helpers import free_port

GRID = """
method: grid
metric: {name: test_accuracy, goal: maximize}
parameters:
  train.learning_rate: {values: [0.001, 0.01]}
  train.kernels: {values: [[4, 8], [8, 16]]}
name: tiny-grid
"""


STALL = Path(__file__).with_name("sweep_cluster_stall.py")


def _cluster(tmp_path, **kwargs):
    cluster = DaskCluster(tmp_path / "dask", n_workers=2, nthreads=1, **kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture
def dask_cluster(tmp_path, wandb_offline):
    yield from _cluster(tmp_path)


@pytest.fixture
def dask_cluster_worker0_stalls(tmp_path, wandb_offline):
    """The same cluster, but worker0's first checkpoint is its last act (`tests/sweep_cluster_stall.py`): its trial
    waits there, checkpoint on disk, until the test kills the worker."""
    yield from _cluster(tmp_path, worker_args={0: ["--preload", str(STALL)]})


def _argv(tiny_mnist, tmp_path, sweep_text: str, name: str = "sweep.yaml") -> list[str]:
    f = tmp_path / name
    f.write_text(sweep_text)
    return ["sweep", "--sweep", str(f), "--source", "local", "--local-dir", str(tiny_mnist), "--slice", "1",
            "--epochs", "1", "--batch-size", "16", "--root", str(tmp_path / "data"),
            "--artifacts-dir", str(tmp_path / "art"), "--lineage-db", str(tmp_path / "lineage.db"),
            "--wandb-mode", "offline", "--onnx-latency-samples", "20", "--onnx-throughput-batch", "32"]


def _wandb_runs(wandb_dir) -> dict[str, tuple[str, str]]:
    from prefect_wandb.wandb.run_file import offline_records

    runs = {}
    for f in wandb_dir.rglob("offline-run-*/run-*.wandb"):
        try:
            run = next((r.run for r in offline_records(f) if r.WhichOneof("record_type") == "run"), None)
        except Exception:  # noqa: BLE001 - the file of a trial attempt killed with its worker, cut short
            continue
        if run is not None:  # None: the same, cut before its run record
            runs[run.run_id] = (run.job_type, run.run_group)
    return runs


def _kill_when_stalled(cluster: DaskCluster, seen: dict, flow_done: threading.Event, timeout: float = 240) -> None:
    """Once worker0's trial stalls after its first checkpoint, SIGKILL worker0 (a lost machine: its checkpoint stays,
    its journal is lost) and start worker2, one the flow never saw at its start. worker0 is killed whatever happens
    (the flow must not wait on it for good); no worker is started once the flow is over."""
    marker = cluster.root / "worker0" / "stalled"
    try:
        deadline = time.monotonic() + timeout
        while not marker.is_file() and not flow_done.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.is_file():
            seen["checkpoint"] = Path(marker.read_text())
            seen["checkpoint_on_disk"] = seen["checkpoint"].is_file()
    finally:
        cluster.kill_worker(0)
        seen["killed"] = "worker0"
        if not flow_done.is_set():
            cluster.add_worker(2)  # a worker the flow's share table never saw


@pytest.mark.slow
def test_a_sweep_on_two_dask_workers_survives_a_lost_worker_records_every_trial_once_and_reruns_from_the_store(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, dask_cluster_worker0_stalls, capsys):
    """worker0 is killed mid-training (its checkpoint on disk, its journal lost) and a new worker joins, one that
    was not there when the flow looked at the cluster: every trial is recorded once, the lost one rerun with the
    trial's thread count, trained from scratch (the checkpoint of a run the store does not know is discarded), and
    every model is the one `reproduce` makes from the record. Then the run's state and production-model artifact,
    the audit, a rerun that reuses every trial, and a trial that fails."""
    from tests.helpers import flow_run

    dask_cluster = dask_cluster_worker0_stalls
    sized = ["--checkpoint-every", "2"]  # 8 batches a trial: worker0 stalls after its second
    argv = _argv(tiny_mnist, tmp_path, GRID) + ["--dask-address", dask_cluster.address, "--workers", "2", *sized]
    seen: dict = {}
    flow_done = threading.Event()
    killer = threading.Thread(target=_kill_when_stalled, args=(dask_cluster, seen, flow_done), daemon=True)
    killer.start()
    try:
        rc = main(argv)
    finally:
        flow_done.set()
        killer.join(timeout=30)
    out = capsys.readouterr()
    assert seen.get("checkpoint_on_disk"), f"worker0 never stalled on a checkpoint on disk: {seen}"
    assert seen.get("killed") == "worker0"
    assert rc == 0, out.err[-3000:]
    summary = json.loads(out.out)
    assert dask_cluster.workers[0].poll() is not None
    assert not seen["checkpoint"].exists()  # no checkpoint outlives the sweep (the rerun discarded the lost one: below)

    # every trial finished once; the one the lost worker held was rerun on another worker
    assert [t["status"] for t in summary["trials"]] == ["finished"] * 4 and summary["failed"] == []
    assert summary["workers"] == 2
    store = LineageStore(tmp_path / "lineage.db")
    runs = store.runs()
    assert all(r.status == "finished" for r in runs), [(r.job_type, r.status, r.error) for r in runs]
    assert Counter(r.job_type for r in runs) == {"prepare-data": 1, "train": 4, "evaluate": 4, "select": 1,
                                                    "export-onnx": 1, "validate-onnx": 1, "promote": 1, "report": 1}
    # it ends as `run` does: the winner's run report, the ONNX file to audit (a file, under run's key), the W&B line
    assert Path(summary["report"]).is_file() and summary["onnx_file"] == summary["winner"]["onnx_file"]
    assert Path(summary["onnx_file"]).name == "model.onnx" and Path(summary["onnx_file"]).is_file()
    closing = out.err.splitlines()
    assert f"report: {summary['report']}" in closing
    assert any(ln.startswith(f"ONNX model: {summary['onnx_file']} (audit it: mnist-pipeline audit ") for ln in closing)
    assert any(ln.startswith("W&B: ") for ln in closing)
    [dataset] = store.artifacts("dataset")
    models = store.artifacts("model")
    assert len(models) == 4 and [m.version for m in models] == [0, 1, 2, 3]  # no duplicate model versions
    assert sorted(json.dumps(m.metadata["fingerprint"], sort_keys=True) for m in models) == sorted(
        {json.dumps(m.metadata["fingerprint"], sort_keys=True) for m in models})
    # each trial used its worker's one thread, the rerun too (how a run went is in its record, not in the model's
    # files); a checkpoint is resumed only when its writer is on record
    trains = [r for r in runs if r.job_type == "train"]
    assert {r.summary["threads"] for r in trains} == {1} == {r.config["train"]["threads"] for r in trains}
    known = {r.run_id for r in runs}
    for r in trains:
        assert not r.summary["resumed"] or r.summary["checkpoint_written_by"] in known, r.summary
    logs = "".join(dask_cluster.log(f"worker{i}") for i in (1, 2))  # the rerun's warning, on its worker
    assert "which the lineage store does not know" in logs and "discarded, training starts over" in logs
    # what the lost worker's trial left is gone: its staging folder, and its offline W&B run, which the store never
    # recorded (`wandb sync` would have uploaded it); every recorded run keeps its own
    assert list((tmp_path / "art" / ".staging").iterdir()) == []
    assert {p.name.rsplit("-", 1)[1] for p in wandb_offline.rglob("offline-run-*")} == known
    for a in store.artifacts():
        verify_files(a.path, a.files)
        assert manifest_digest(a.files) == a.digest
    # full lineage per trial: dataset -> train -> model -> evaluate -> metrics, trained on a worker process
    flow_pid = os.getpid()
    metrics_by_model = {}
    for m in models:
        [train_run] = [store.run(r) for r in store.producers(m.artifact_id)]
        assert train_run.job_type == "train" and [u.digest for u in store.edges(train_run.run_id).used] \
            == [dataset.digest]
        assert train_run.env["process"]["pid"] != flow_pid and train_run.env["started_at_worker"]
        [ev] = [store.run(r) for r in store.consumers(m.artifact_id) if store.run(r).job_type == "evaluate"]
        assert {u.artifact_id for u in store.edges(ev.run_id).used} == {m.artifact_id, dataset.artifact_id}
        [metrics_by_model[m.artifact_id]] = store.edges(ev.run_id).produced

    # select consumed every trial's metrics and named the best by test_accuracy; that model alone was promoted
    [select_run] = [r for r in runs if r.job_type == "select"]
    edges = store.edges(select_run.run_id)
    assert {u.artifact_id for u in edges.used} == {x.artifact_id for x in metrics_by_model.values()}
    [result] = edges.produced
    assert result.type == "sweep-result"
    best_model_id = max(metrics_by_model, key=lambda k: (metrics_by_model[k].metadata["test_accuracy"], -k))
    winner = result.metadata["winner"]
    assert winner["model"]["digest"] == store.artifact(best_model_id).digest
    assert winner["test_accuracy"] == max(x.metadata["test_accuracy"] for x in metrics_by_model.values())
    assert store.alias("convnet", "production").artifact_id == best_model_id
    [onnx] = store.artifacts("onnx")
    [export_run] = [r for r in runs if r.job_type == "export-onnx"]
    assert {u.artifact_id for u in store.edges(export_run.run_id).used} == {best_model_id, result.artifact_id}
    assert summary["winner"]["model"] == f"convnet:v{store.artifact(best_model_id).version}"

    # W&B: every recorded run is an offline W&B run of the same job type, all grouped by the sweep's flow run
    wb = _wandb_runs(wandb_offline)
    assert {r.run_id for r in runs} <= set(wb)
    assert all(wb[r.run_id][0] == r.job_type for r in runs)
    assert len({wb[r.run_id][1] for r in runs}) == 1

    # Prefect: the trials are task runs of the flow run, the results a table artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]]))
        trials = client.read_task_runs(flow_run_filter=flow_filter, task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=[f"trial-{i:03d}" for i in range(4)])))
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sweep-results"])),
                                        flow_run_filter=flow_filter)
        [version] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["production-model"])),
            flow_run_filter=flow_filter)
    assert sorted(t.name for t in trials) == [f"trial-{i:03d}" for i in range(4)]
    assert all(t.state.is_completed() for t in trials)
    assert table.type == "table" and len(json.loads(table.data)) == 4
    # as a pipeline run's: a plain Completed state whose message is the gate's decision on the winner, and a new
    # version of the `production-model` artifact
    state = flow_run(summary["flow_run_id"]).state
    assert state.is_completed() and state.name == "Completed", state.message
    assert state.message == (f"winner trial {summary['winner']['trial']}: promoted: {summary['winner']['model']} is "
                             f"production ({summary['promotion']['reason']})")
    assert version.data.startswith(f"# Production model: {summary['winner']['model']}\n")

    # every model, the rerun trial's included, is the one `reproduce` makes from its record
    for m in models:
        assert main(["reproduce", f"{m.name}:v{m.version}", "--lineage-db", str(tmp_path / "lineage.db")]) == 0, \
            capsys.readouterr().out[-2000:]
    capsys.readouterr()

    # the audit of the winner's ONNX file walks through select back to the sweep's data
    assert main(["audit", str(Path(onnx.path) / "model.onnx"),
                 "--lineage-db", str(tmp_path / "lineage.db")]) == 0
    report = capsys.readouterr().out
    assert "produced by select run" in report and "convnet-sweep:v0 (sweep-result)" in report
    assert "produced by prepare-data run" in report and "VERIFIED" in report

    # a rerun reuses all four trials: nothing is trained again, no new model version
    rc = main(_argv(tiny_mnist, tmp_path, GRID) + ["--dask-address", dask_cluster.address, *sized])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    again = json.loads(out.out)
    assert [t["status"] for t in again["trials"]] == ["reused"] * 4
    assert [t["model"] for t in again["trials"]] == [t["model"] for t in summary["trials"]]
    assert Counter(r.job_type for r in store.runs())["train"] == 4 and len(store.artifacts("model")) == 4

    # a trial that fails (its checkpoint path is taken by a folder: the disk refuses the write) is recorded as
    # failed; the sweep goes on with the others, reports it and exits 1
    from mnist_pipeline.checkpoint_files import checkpoint_path

    partial = GRID.replace("[0.001, 0.01]", "[0.001, 0.003]").replace("[[4, 8], [8, 16]]", "[[4, 8]]")
    base = PipelineConfig.model_validate({"data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1},
                                          "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.003,
                                                    "kernels": [4, 8]},
                                          "artifacts_dir": str(tmp_path / "art")})
    blocker = checkpoint_path(base, dataset.ref())
    (blocker / "occupied").mkdir(parents=True)
    rc = main(_argv(tiny_mnist, tmp_path, partial, "partial.yaml") + ["--dask-address", dask_cluster.address,
                                                                       *sized])
    out = capsys.readouterr()
    assert rc == 1
    third = json.loads(out.out)
    assert [t["status"] for t in third["trials"]] == ["reused", "failed"] and third["failed"] == [1]
    assert "1 trial(s) failed: [1]" in out.err
    failed = [r for r in store.runs() if r.status == "failed"]
    assert [r.job_type for r in failed] == ["train"] and failed[0].config["train"]["learning_rate"] == 0.003
    assert len(store.artifacts("model")) == 4  # the failed trial made no model
    assert third["winner"]["trial"] == 0


@pytest.mark.parametrize("text, message", [
    ("method: grid\nparameters: {train.optimizer: {values: [sgd]}}", "unknown parameter path 'train.optimizer'"),
    ("method: grid\nparameters: {train.learning_rate: {values: []}}", "values must be a non-empty list"),
    ("method: bayes\nmetric: {name: test_loss, goal: minimize}\nparameters: {train.seed: {values: [1, 2]}}",
     "method 'bayes' is not supported"),
    ("method: grid\nparameters: {train.batch_size: {values: [16, 0]}}", "trial 1 (train.batch_size=0)"),
])
def test_a_bad_sweep_file_is_refused_with_one_line_before_any_work(tiny_mnist, tmp_path, capsys, text, message):
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: the refusal must come before any contact
    argv = _argv(tiny_mnist, tmp_path, text) + ["--dask-address", dead]
    start = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("mnist-pipeline: invalid sweep:")
    assert time.monotonic() - start < 5
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "art").exists()


def test_an_unreachable_scheduler_is_one_line_and_exit_1(tiny_mnist, tmp_path, capsys, monkeypatch):
    import functools

    from mnist_pipeline import sweep_workers

    # a refused connection is retried until the wait's timeout (10 s by default): its length is not what is tested
    monkeypatch.setattr(sweep_workers, "wait_for_scheduler",
                        functools.partial(sweep_workers.wait_for_scheduler, timeout=1.0))
    dead = f"tcp://127.0.0.1:{free_port()}"
    assert main(_argv(tiny_mnist, tmp_path, GRID) + ["--dask-address", dead]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mnist-pipeline: no Dask scheduler at {dead}")
    assert not (tmp_path / "lineage.db").exists()


@pytest.mark.slow
def test_the_cluster_fixture_runs_separate_single_threaded_workers_that_can_be_lost(dask_cluster):
    from distributed import Client

    with Client(dask_cluster.address, timeout=10) as client:
        info = client.run(lambda: (os.getpid(), os.getcwd()))
        assert len(info) == 2 and len({pid for pid, _ in info.values()}) == 2
        assert {os.path.basename(cwd) for _, cwd in info.values()} == {"worker0", "worker1"}
        assert set(client.nthreads().values()) == {1}
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info)
        dask_cluster.kill_worker(0)
        deadline = time.monotonic() + 30
        while len(client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2


def test_each_worker_gets_its_share_of_its_machines_cores():
    from mnist_pipeline.sweep_workers import core_shares

    found = {"tcp://a:1": {"host": "a", "cpus": 2}, "tcp://a:2": {"host": "a", "cpus": 2},
             "tcp://b:1": {"host": "b", "cpus": 16}, "tcp://c:1": {"host": "c", "cpus": 2}}
    nthreads = {"tcp://a:1": 1, "tcp://a:2": 1, "tcp://b:1": 4, "tcp://c:1": 4}
    assert core_shares(found, nthreads) == {"tcp://a:1": 1, "tcp://a:2": 1, "tcp://b:1": 4, "tcp://c:1": 1}


@pytest.mark.slow
def test_a_sweep_on_dask_keeps_its_records_in_postgresql_and_its_files_in_s3(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, postgres, postgres_db, s3, s3_bucket, monkeypatch,
        capsys):
    """The team's locations on a Dask cluster: the flow and both workers reach the store and S3 with the password
    only in PGPASSWORD and S3's keys only in AWS_*; each trial is recorded in PostgreSQL by a worker process, every
    version's files are in S3 (none in a local artifacts folder), the winner is promoted and its ONNX file audits
    VERIFIED from S3."""
    secrets_env = {"PGPASSWORD": postgres.password, **s3.env()}
    for k, v in secrets_env.items():
        monkeypatch.setenv(k, v)
    bare = postgres_db.replace(f":{postgres.password}@", "@")
    artifacts = s3_bucket + "/sweep"
    grid = GRID.replace("[[4, 8], [8, 16]]", "[[4, 8]]")  # two trials
    argv = _argv(tiny_mnist, tmp_path, grid)
    argv[argv.index("--artifacts-dir") + 1], argv[argv.index("--lineage-db") + 1] = artifacts, bare
    cluster = DaskCluster(tmp_path / "dask", n_workers=2, nthreads=1, env=secrets_env)
    try:
        rc = main([*argv, "--dask-address", cluster.start().address, "--workers", "2"])
    finally:
        cluster.close()
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    summary = json.loads(out.out)
    assert [t["status"] for t in summary["trials"]] == ["finished"] * 2
    store = LineageStore(postgres_db)
    runs = store.runs()
    assert all(r.status == "finished" for r in runs), [(r.job_type, r.status, r.error) for r in runs]
    trains = [r for r in runs if r.job_type == "train"]
    assert len(trains) == 2 and os.getpid() not in {r.env["process"]["pid"] for r in trains}
    assert all(a.path.startswith(f"{artifacts}/{a.type}/") for a in store.artifacts())
    assert not (tmp_path / "art").exists()
    production = store.alias("convnet", "production")
    assert production is not None and summary["winner"]["model"] == f"convnet:v{production.version}"
    [onnx] = store.artifacts("onnx")
    assert main(["audit", f"{onnx.name}:v{onnx.version}", "--lineage-db", bare]) == 0
    assert "VERIFIED" in capsys.readouterr().out
