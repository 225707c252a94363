"""What an operator meets, through real Prefect flow runs of the real tasks (wandb offline): an artifact's version
is decided by its content (not the folder it was made in, not whether training was resumed); a mirror that has
no such file is not retried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prefect import flow

from mnist_pipeline import training
from mnist_pipeline.config import PipelineConfig
from prefect_wandb.audit import audit
from prefect_wandb.store import LineageStore
from tests.helpers import write_mnist


def _cfg(base: Path, src: Path, **train) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(src), "slice": 1, "root": str(base / "data")},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 4, "log_every": 3, "watch": False,
                  "threads": 1, **train},
        "wandb": {"mode": "offline"}, "artifacts_dir": str(base / "art"),
        "lineage_db": str(base / "lineage.db")}).resolved()


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON: not valid JSON")
    return json.loads(text, parse_constant=refuse)


@flow(name="prepare-only")
def _prepare_flow(cfg: PipelineConfig):
    from mnist_pipeline.tasks import prepare_data

    return prepare_data(cfg)


@flow(name="train-once")
def _train_flow(cfg: PipelineConfig):
    from mnist_pipeline.tasks import prepare_data, train

    return train.with_options(retries=0)(cfg, prepare_data(cfg))


def test_the_same_raw_files_in_another_folder_are_the_same_dataset_version(prefect_server, wandb_offline, tmp_path):
    write_mnist(tmp_path / "made", gz=True)
    digests = {}
    for where in ("here", "elsewhere/deeper"):
        base = tmp_path / where
        shutil.copytree(tmp_path / "made", base / "src")  # the same bytes
        state = _prepare_flow(_cfg(base, base / "src"), return_state=True)
        assert state.is_completed(), state.message
        [rec] = LineageStore(base / "lineage.db").artifacts("dataset")
        digests[where] = rec.digest
        _no_nan((Path(rec.path) / "dataset.json").read_text())
        assert str(base) not in (Path(rec.path) / "dataset.json").read_text()
        # where the files came from is still on record, and the audit shows it
        report = audit(LineageStore(base / "lineage.db"), "mnist:v0")
        [art] = [a for a in report.artifacts.values() if a.type == "dataset"]
        assert {Path(r["origin"]).parent for r in art.raw_files} == {base / "src" / "MNIST" / "raw"}
        assert art.metadata["source_location"] == str(base / "src")
        assert all(r["status"] == "ok" for r in art.raw_files)
    assert digests["here"] == digests["elsewhere/deeper"]


def test_a_train_killed_right_after_its_final_checkpoint_reruns_to_the_same_model_version(
        prefect_server, wandb_offline, tmp_path, monkeypatch):
    write_mnist(tmp_path / "src")
    straight_cfg = _cfg(tmp_path / "straight", tmp_path / "src")
    assert _train_flow(straight_cfg, return_state=True).is_completed()

    real = training._write_checkpoint

    def killed_after_the_last(path, state, lineage):
        real(path, state, lineage)
        if state["epoch"] == 2:  # the end-of-training checkpoint is on disk: the process dies here
            raise InterruptedError("killed right after the final checkpoint")

    cfg = _cfg(tmp_path / "killed", tmp_path / "src")
    monkeypatch.setattr(training, "_write_checkpoint", killed_after_the_last)
    assert _train_flow(cfg, return_state=True).is_failed()
    monkeypatch.setattr(training, "_write_checkpoint", real)
    state = _train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message

    store, straight = LineageStore(cfg.lineage_db), LineageStore(straight_cfg.lineage_db)
    [model], [expected] = store.artifacts("model"), straight.artifacts("model")
    [resumer] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"]
    [uninterrupted] = [r for r in straight.runs() if r.job_type == "train"]
    assert resumer.summary["resumed_from_checkpoint"] == {"epoch": 2, "batch": 0, "examples_seen": 240}
    assert model.digest == expected.digest  # the same version
    for name in ("model.pt", "model_config.json"):
        assert (Path(model.path) / name).read_bytes() == (Path(expected.path) / name).read_bytes(), name
    meta = _no_nan((Path(model.path) / "model_config.json").read_text())
    assert meta["final_loss"] == expected.metadata["final_loss"] > 0
    # the loss the run report plots: the points logged to W&B (every 3 batches of 8 an epoch), no final partial
    # batch, the same whether resumed or not
    points = resumer.summary["loss_points"]
    assert points == uninterrupted.summary["loss_points"]
    assert [p[0] for p in points] == [32, 80, 120, 168, 216]
    assert resumer.summary["final_loss"] == meta["final_loss"]


def test_a_404_mirror_fails_prepare_data_once_with_its_http_status(prefect_server, wandb_offline, tmp_path):
    from mnist_pipeline.tasks.prepare_data import for_config
    from tests.test_mirrors import _CountingMirror

    empty = _CountingMirror(tmp_path / "empty")
    cfg = PipelineConfig.model_validate({
        "data": {"source": "download", "mirrors": [empty.url], "root": str(tmp_path / "data"), "retries": 2,
                 "retry_delay": 0},
        "wandb": {"mode": "offline"}, "artifacts_dir": str(tmp_path / "art"),
        "lineage_db": str(tmp_path / "lineage.db")}).resolved()

    @flow(name="prepare-with-retries")
    def prepare(cfg: PipelineConfig):
        return for_config(cfg)(cfg)

    try:
        state = prepare(cfg, return_state=True)
    finally:
        empty.close()
    assert state.is_failed()
    assert f"{empty.url}train-images-idx3-ubyte.gz: HTTP 404 Not Found" in state.message, state.message
    assert empty.gets == {"train-images-idx3-ubyte.gz": 1}  # one attempt: Prefect's two retries were not spent
    assert [(r.job_type, r.status) for r in LineageStore(cfg.lineage_db).runs()] == [("prepare-data", "failed")]


@pytest.fixture(autouse=True)
def _no_allowed_roots(monkeypatch):
    monkeypatch.delenv("MNIST_PIPELINE_ALLOWED_ROOTS", raising=False)
