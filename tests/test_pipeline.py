"""The whole flow (`flows/pipeline.py`) killed and run again, or run twice at once: a training process killed with
SIGKILL is resumed from its checkpoint by the rerun, and two flow runs sharing one lineage store and W&B folder
neither mix their records nor overwrite each other's files. Real `mnist-pipeline run` processes against the Prefect
test server, wandb offline, SQLite, the W&B offline run files read back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import torch

from prefect_wandb.store import LineageStore
from tests.helpers import (
    JOB_TYPES,
    REPO,
    assert_store_is_sound,
    run_command,
    run_env,
    run_flags,
    wandb_runs,
    write_mnist,
)
from tests.wandb_inprocess import wandb_env

# -------------------------------------------------------------------------------------------------- retries and kills


def test_a_killed_training_process_is_resumed_by_the_rerun(prefect_server, tmp_path, capsys):
    """The killed run is a process of its own (kill -9 is the point); the rerun runs in this one (`main`), with
    the same flags and environment."""
    n_train, epochs, batch = 4000, 2, 50  # 160 batches, seconds of training: time to kill it
    per_epoch = n_train // batch
    base = tmp_path
    argv = run_command("--source", "synthetic", "--synthetic-train", str(n_train), "--synthetic-test", "100",
                       "--slice", "1", "--epochs", str(epochs), "--batch-size", str(batch), "--checkpoint-every", "7",
                       "--log-every", "10", "--no-watch", "--wandb-mode", "offline", *run_flags(base))
    env = run_env(base)
    ckpt_dir = base / "art" / ".checkpoints"
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(ckpt_dir.glob("train-*.pt")):  # wait for training to be under way ...
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        [ckpt] = ckpt_dir.glob("train-*.pt")
        seen = torch.load(ckpt, weights_only=True)["batches"]
        while torch.load(ckpt, weights_only=True)["batches"] < seen + 14:  # ... and two checkpoints further
            assert first.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # mid-epoch, no chance to clean up
        assert first.wait(30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # whatever it had started (wandb's service) goes with it
        first.stdout.close()

    last = torch.load(ckpt, weights_only=True)
    assert 0 < last["batches"] < epochs * per_epoch
    store = LineageStore(base / "lineage.db")
    killed = [r for r in store.runs() if r.job_type == "train"]
    assert [r.status for r in killed] == ["running"]  # it never got to say otherwise
    assert store.artifacts("model") == []
    # ... but the input it had declared is on record (edges are written when declared, not only at the end)
    assert [a.type for a in store.edges(killed[0].run_id).used] == ["dataset"]
    assert_store_is_sound(store)  # the store points at no missing or partial file

    from mnist_pipeline.cli.main import main

    with wandb_env(env):  # the rerun in this process, in the same W&B environment
        code = main(argv[3:])
    assert code == 0, capsys.readouterr().err[-3000:]
    [model] = store.artifacts("model")
    [resumer] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"]
    resumed = resumer.summary["resumed_from_checkpoint"]
    assert resumed == {"epoch": last["epoch"], "batch": last["batch"], "examples_seen": last["examples_seen"]}
    assert resumed["epoch"] * per_epoch + resumed["batch"] > 0
    # the examples seen in all are those of an uninterrupted run, not more (no batch trained twice in the count)
    assert model.metadata["examples_seen"] == epochs * n_train and model.metadata["batches"] == epochs * per_epoch
    trains = {r.run_id: r for r in store.runs() if r.job_type == "train"}
    dead = trains[killed[0].run_id]
    assert dead.status == "failed" and dead.error.startswith("process died")
    assert [r.status for r in trains.values()].count("finished") == 1
    assert all(r.status in ("finished", "failed") for r in store.runs())
    assert len(store.artifacts("dataset")) == 1  # the rerun used the same dataset, so the checkpoint applied
    assert not list(ckpt_dir.glob("train-*.pt"))
    assert_store_is_sound(store)


# ---------------------------------------------------------------------------------------------------- concurrent runs


def _has_runs(db: Path) -> bool:
    """Whether the store at `db` (perhaps being created this moment by another process) has a run on record."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.Error:  # not created yet, or locked for a moment
        return False


def test_two_flow_runs_at_once_share_one_store_without_mixing(prefect_server, tmp_path, capsys):
    """One flow run in a process of its own, the other in this one (`main`), started once the first is on record."""
    from mnist_pipeline.cli.main import main

    write_mnist(tmp_path / "src", gz=True)
    argvs = {seed: run_command("--source", "local", "--local-dir", str(tmp_path / "src"), "--slice", "1", "--epochs",
                               "1", "--batch-size", "16", "--log-every", "2", "--wandb-mode", "offline",
                               *run_flags(tmp_path, seed=seed)) for seed in (1, 2)}
    env = run_env(tmp_path)
    other = subprocess.Popen(argvs[1], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        db, deadline = tmp_path / "lineage.db", time.monotonic() + 240
        while not _has_runs(db):  # the other flow run has begun its first stage
            assert other.poll() is None, other.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the other flow run never started"
            time.sleep(0.05)
        with wandb_env(env):
            assert main(argvs[2][3:]) == 0, capsys.readouterr().err[-3000:]
        _, err = other.communicate(timeout=300)
        assert other.returncode == 0, err[-3000:]
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate()

    store = LineageStore(tmp_path / "lineage.db")
    assert_store_is_sound(store)  # integrity ok, every artifact's files verify: nothing overwritten
    runs = store.runs()
    assert all(r.status == "finished" for r in runs)
    by_flow: dict[str, list[dict]] = {}
    for r in runs:
        by_flow.setdefault(r.flow_run_id, []).append(r)
    assert len(by_flow) == 2
    for flow_runs in by_flow.values():
        jobs = sorted(r.job_type for r in flow_runs)
        assert jobs in (sorted(JOB_TYPES), sorted(JOB_TYPES - {"prepare-data"}))  # prepare-data may be cached
        assert {r.run_group for r in flow_runs} == {f"flow-{flow_runs[0].flow_run_id}"}
        assert {r.config["train"]["seed"] for r in flow_runs} in ({1}, {2})
    assert len(runs) >= 9

    models = store.artifacts("model")
    assert sorted(m.version for m in models) == [0, 1] and len({m.digest for m in models}) == 2
    assert {m.metadata["fingerprint"]["seed"] for m in models} == {1, 2}
    assert len(store.artifacts("dataset")) == 1  # same data, one version, even if both prepared it
    for kind in ("metrics", "onnx", "validation"):
        assert len(store.artifacts(kind)) == 2
    # each W&B run holds only its own flow run's records and artifacts
    on_disk = wandb_runs(tmp_path / "wandb")
    assert set(on_disk) == {r.run_id for r in runs}
    for r in runs:
        job, group, logged, history = on_disk[r.run_id]
        assert (job, group) == (r.job_type, r.run_group)
        produced = store.edges(r.run_id).produced
        assert sorted(logged) == sorted((a.name, sorted(["latest", f"sha256-{a.digest[:16]}"])) for a in produced)
        keys = {k for row in history for k in row}
        assert ("loss" in keys) == (job == "train") and ("test_accuracy" in keys) == (job == "evaluate")
        if job == "train":  # its own 8 batches' loss rows, not the other training's
            assert [row["_step"] for row in history if "loss" in row] == [16, 48, 80, 112]
    # the promotion gate saw both models, one after the other: one production model
    assert len(store.promotions()) == 2 and store.alias("convnet", "production").type == "model"
    for m in models:  # and each model's inputs and consumers stay within its own flow run
        [producer] = [r for r in runs if r.run_id == m.producer_run_id]
        for consumer in store.consumers(m.artifact_id):
            assert store.run(consumer).flow_run_id == producer.flow_run_id



# ------------------------------------------------------------------------------------- what the Prefect UI shows of a run


def _artifact_versions(key: str, flow_run_ids: list) -> list:
    """The versions of the Prefect artifact `key` that these flow runs wrote, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
                                     sort=ArtifactSort.CREATED_DESC)[::-1]


def test_every_run_s_state_says_its_outcome_and_production_model_is_an_artifact_with_its_history(
        prefect_server, wandb_offline, tiny_mnist, tmp_path):
    """Promoted, kept as candidate, skipped: three plain Completed states whose messages (as the Prefect API holds
    them, what the UI's runs list shows) say which; every run that reached the gate wrote a new version of the
    `production-model` artifact naming the production model, since when, the runs that made it and its report."""
    from prefect.client.orchestration import get_client

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline as pipeline
    from tests.helpers import flow_run, tiny_config

    def run(**train):
        state = pipeline(config=tiny_config(tmp_path, tiny_mnist, train={"watch": False, **train}), return_state=True)
        assert state.is_completed() and state.name == "Completed", state.message
        fr = flow_run(state.state_details.flow_run_id)
        assert fr.state.name == "Completed" and fr.state.message == state.message  # the server holds the message
        return fr, state.result()

    good = {"learning_rate": 0.01, "epochs": 3}
    promoted, first = run(**good)
    assert first.promotion.decision == "promoted"
    assert promoted.state.message == f"promoted: convnet:v0 is production ({first.promotion.reason})"
    kept, second = run(learning_rate=1e-6)
    assert second.promotion.decision == "candidate"
    assert kept.state.message.startswith("kept as candidate: convnet:v1 (accuracy ")
    assert second.promotion.reason in kept.state.message and "< production" in kept.state.message
    skipped, third = run(**good)
    assert third.status == "skipped" and skipped.state.message.startswith("training skipped: ")

    store = LineageStore(tmp_path / "lineage.db")
    prod = store.alias("convnet", "production")
    [train_run] = [r for r in store.runs(str(promoted.id)) if r.job_type == "train"]
    versions = _artifact_versions("production-model", [promoted.id, kept.id, skipped.id])
    assert [v.flow_run_id for v in versions] == [promoted.id, kept.id]  # the skipped run decided nothing
    with get_client(sync_client=True) as client:
        [latest] = [a for a in client.read_latest_artifacts() if a.key == "production-model"]
    assert latest.latest_id == versions[-1].id  # the key's latest version is the second run's
    for v in versions:  # both name the production model, the runs that made it, its figures and report
        text = v.data.replace("<wbr>", "")  # where long cells may wrap (no character a copy would get)
        assert text.startswith("# Production model: convnet:v0\n"), text[:200]
        assert f"since {store.aliases_of(prod.artifact_id)[-1].set_at}" in text
        assert str(promoted.id) in text and train_run.run_id in text and prod.digest in text
        assert first.report in text and "test accuracy on mnist:v0" in text
    assert "gated convnet:v0" in versions[0].data and "promoted it to production" in versions[0].data
    assert f"flow run `{kept.id}` gated convnet:v1" in versions[1].data and "kept it candidate" in versions[1].data
    assert second.promotion.reason in versions[1].data


def test_a_failed_run_names_its_stage_and_the_next_run_says_it_resumed_from_its_checkpoint(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, monkeypatch):
    """A run whose training stops mid-way (as a run cancelled from the UI or killed does) fails with a message that
    names the stage; the next run of the same inputs resumes from its checkpoint and says so in its log, its
    summary and its run report."""
    from mnist_pipeline.flows import pipeline
    from mnist_pipeline.tasks import train
    from tests.helpers import flow_run, flow_run_logs, interrupt_training, tiny_config

    cfg = tiny_config(tmp_path, tiny_mnist, train={"watch": False, "checkpoint_every": 4})
    with monkeypatch.context() as m:
        m.setattr(pipeline, "train", train.with_options(retries=0))
        interrupt_training(m, 6)  # a checkpoint after batch 4, then training stops
        failed = pipeline.mnist_lineage_pipeline(config=cfg, return_state=True)
    assert failed.is_failed()
    message = flow_run(failed.state_details.flow_run_id).state.message
    assert message == "failed at train: InterruptedError: stopped after 6 batches", message
    store = LineageStore(cfg.lineage_db)
    [stopped] = [r for r in store.runs() if r.job_type == "train"]

    state = pipeline.mnist_lineage_pipeline(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    said = (f"resuming from checkpoint written by run {stopped.run_id} (flow run {failed.state_details.flow_run_id}, "
            "failed: InterruptedError")
    logs = flow_run_logs(state.state_details.flow_run_id, "resuming from checkpoint written by run")
    assert any(said in line and "at epoch 0, batch 4 (64 examples seen)" in line for line in logs), logs
    summary = state.result()
    note = (f"training resumed from the checkpoint written by run {stopped.run_id} (flow run "
            f"{failed.state_details.flow_run_id}, that run failed: InterruptedError")
    assert summary.reason.startswith("retrained: ") and note in summary.reason, summary.reason
    assert "at epoch 0, batch 4 (64 examples seen)" in summary.reason
    page = Path(summary.report).read_text(encoding="utf-8")
    assert note in page and "the loss before that point is that run" in page
