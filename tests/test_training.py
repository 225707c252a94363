import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from prefect import flow

from mnist_pipeline import training
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.data import Split
from mnist_pipeline.metrics import evaluate
from mnist_pipeline.model import ConvNet, ModelConfig
from mnist_pipeline.tasks import train
from prefect_wandb.refs import ArtifactRef
from prefect_wandb.store import LineageStore
from tests.helpers import flow_run_logs, interrupt_training, store_state, tiny_digits


def _split(n=400, seed=0):
    images, labels = tiny_digits(n, seed)
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


def _run(tmp_path=None, stop=None, epochs=2, log=None, ckpt=None, lineage=None):
    training.seed_everything(3)
    model = ConvNet(ModelConfig(kernels=(4, 8)))
    settings = training.LoopSettings(epochs=epochs, batch_size=32, learning_rate=0.005, seed=3, log_every=5,
                                     checkpoint_every=4, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        if stop is not None:
            interrupt_training(mp, stop)
        result = training.train(model, _split(), settings, torch.device("cpu"), on_log=log, checkpoint=ckpt,
                                checkpoint_lineage=lineage)
    return model, result


@pytest.mark.slow
def test_training_is_repeatable_and_learns():
    a, ra = _run()
    b, _ = _run()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert ra.examples_seen == 800 and ra.batches == 26
    assert evaluate(a, _split(200, 9), 10).accuracy > 0.5  # far above chance on the learnable toy


@pytest.mark.slow  # real training
def test_loss_is_logged_every_n_batches_with_examples_as_step():
    calls = []
    _run(log=lambda step, epoch, loss: calls.append((step, epoch, loss)))
    # as the tutorial: when (batch_ct + 1) % log_every == 0, i.e. after batches 4, 9, 14, 19, 24
    assert [c[0] for c in calls] == [128, 288, 400 + 32 * 1, 400 + 32 * 6, 400 + 32 * 11]
    assert [c[1] for c in calls] == [0, 0, 1, 1, 1]
    assert all(c[2] > 0 for c in calls)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with contextlib.suppress(InterruptedError):
        _run(stop=17, ckpt=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["batch"], state["batches"]) == (1, 3, 16)  # last checkpoint: batch 16
    resumed, result = _run(ckpt=ckpt)
    assert result.resumed_from == {"epoch": 1, "batch": 3, "examples_seen": 400 + 3 * 32}
    straight, _ = _run()
    for (k, va), vb in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k


LINEAGE = training.CheckpointLineage(dataset_digest="d" * 64, fingerprint={"epochs": 2, "seed": 3}, run_id="run-a")


def _interrupted(ckpt, lineage=LINEAGE):
    with pytest.raises(InterruptedError):
        _run(stop=17, ckpt=ckpt, lineage=lineage)
    assert ckpt.exists() and training.sidecar(ckpt).exists()


def test_a_checkpoint_resumes_with_its_lineage_and_names_the_run_that_wrote_it(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    _interrupted(ckpt)
    record = json.loads(training.sidecar(ckpt).read_text())
    assert record["lineage"] == {"dataset_digest": "d" * 64, "fingerprint": {"epochs": 2, "seed": 3}, "run_id": "run-a"}
    _, result = _run(ckpt=ckpt, lineage=training.CheckpointLineage("d" * 64, {"epochs": 2, "seed": 3}, "run-b"))
    assert result.resumed_from == {"epoch": 1, "batch": 3, "examples_seen": 496}
    assert result.checkpoint_written_by == "run-a"


@pytest.mark.parametrize("fault, reason", [
    ("flip", r"sha256 \w{16} does not match the recorded \w{16}: changed since it was written"),
    ("no-record", r"no record of its digest and lineage \(ckpt.pt.json\)"),
    ("other-data", r"written for dataset dddddddddddddddd, not eeeeeeeeeeeeeeee"),
    ("other-settings", r"written for training settings \{'epochs': 2, 'seed': 3\}, not \{'epochs': 2, 'seed': 4\}"),
])
@pytest.mark.slow  # real training, twice
def test_a_checkpoint_that_fails_its_check_is_discarded_with_a_warning_and_training_starts_over(
        tmp_path, caplog, fault, reason):
    ckpt = tmp_path / "ckpt.pt"
    _interrupted(ckpt)
    expect = LINEAGE
    if fault == "flip":
        blob = bytearray(ckpt.read_bytes())
        blob[len(blob) // 2] ^= 0x01  # one flipped bit in the weights: torch.load would still load it
        ckpt.write_bytes(bytes(blob))
    elif fault == "no-record":
        training.sidecar(ckpt).unlink()
    elif fault == "other-data":
        expect = training.CheckpointLineage("e" * 64, LINEAGE.fingerprint)
    else:
        expect = training.CheckpointLineage(LINEAGE.dataset_digest, {"epochs": 2, "seed": 4})
    with caplog.at_level("WARNING"):
        _, result = _run(ckpt=ckpt, lineage=expect)
    assert re.search(rf"discarding checkpoint .*ckpt.pt: {reason}; training from the start", caplog.text), caplog.text
    assert result.resumed_from is None and result.examples_seen == 800 and result.batches == 26


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON: not valid JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_run_killed_right_after_its_final_checkpoint_resumes_to_the_same_model_files(tmp_path, monkeypatch,
                                                                                       caplog):
    """The last checkpoint (after the last batch) is all a rerun has: it trains no batch, and must still write the
    files, and so the digest, of an uninterrupted run, and the same loss record."""
    from mnist_pipeline import stage_files
    from prefect_wandb.refs import manifest, manifest_digest

    settings = training.LoopSettings(epochs=2, batch_size=32, learning_rate=0.005, seed=3, log_every=5,
                                     checkpoint_every=4, progress=False)
    fingerprint = {"epochs": 2, "seed": 3}

    def files(out, ckpt=None):
        training.seed_everything(3)
        out.mkdir()
        _, result = stage_files.train_model_files(out, _split(), kernels=(4, 8), classes=10, settings=settings,
                                              fingerprint=fingerprint, device=torch.device("cpu"), checkpoint=ckpt,
                                              checkpoint_lineage=LINEAGE)
        return result

    straight = files(tmp_path / "straight")
    real = training._write_checkpoint

    def killed_after_the_last(path, state, lineage):
        real(path, state, lineage)
        if state["epoch"] == settings.epochs:  # the end-of-training checkpoint is on disk: the process dies
            raise InterruptedError("killed right after the final checkpoint")

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(training, "_write_checkpoint", killed_after_the_last)
    with pytest.raises(InterruptedError):
        files(tmp_path / "killed", ckpt)
    monkeypatch.setattr(training, "_write_checkpoint", real)
    with caplog.at_level("INFO", logger="mnist_pipeline.training"):
        resumed = files(tmp_path / "resumed", ckpt)

    assert resumed.resumed_from == {"epoch": 2, "batch": 0, "examples_seen": 800}
    assert "written after the last batch (2 epoch(s), 800 examples): nothing left to train" in caplog.text
    for name in stage_files.MODEL_FILES:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert manifest_digest(manifest(tmp_path / "resumed")) == manifest_digest(manifest(tmp_path / "straight"))
    meta = _no_nan((tmp_path / "resumed" / "model_config.json").read_text())
    assert meta["final_loss"] == straight.final_loss > 0 and meta["batches"] == 26
    assert resumed.loss_points == straight.loss_points and len(straight.loss_points) == 5
    _no_nan(training.sidecar(ckpt).read_text())


def test_a_run_resumed_mid_way_keeps_the_loss_points_logged_before_the_kill(tmp_path):
    ckpt, logged = tmp_path / "ckpt.pt", []
    _, straight = _run()
    with pytest.raises(InterruptedError):
        _run(stop=17, ckpt=ckpt, log=lambda *p: logged.append(p))
    _, resumed = _run(ckpt=ckpt)
    assert resumed.loss_points == straight.loss_points
    assert [p[0] for p in straight.loss_points] == [128, 288, 432, 592, 752]  # logged every 5 batches, as W&B has them
    assert resumed.loss_points[:3] == logged[:3]  # batches 4, 9, 14: before the checkpoint at batch 16


def test_json_the_pipeline_writes_refuses_nan(tmp_path):
    from prefect_wandb import storage

    with pytest.raises(ValueError):
        storage.write_json(tmp_path / "x.json", {"final_loss": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_a_loss_that_is_not_a_number_fails_training_with_one_line_instead_of_recording_it():
    model = ConvNet(ModelConfig(kernels=(4, 8)))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # weights gone bad: every loss from here on is NaN
    settings = training.LoopSettings(epochs=1, batch_size=32, log_every=5, progress=False)
    with pytest.raises(training.TrainingDiverged, match=r"^training diverged: the loss after 13 batches is nan "
                       r"\(train.learning_rate 0.005 may be too large\)$"):
        training.train(model, _split(), settings, torch.device("cpu"))


def test_a_diverged_training_is_not_retried_it_would_diverge_again():
    from prefect.states import Failed

    from mnist_pipeline.tasks._common import unless_permanent
    from prefect_wandb.storage import StorageError

    def retried(e: BaseException) -> bool:
        return unless_permanent(None, None, Failed(data=e))

    assert not retried(training.TrainingDiverged("training diverged: the loss after 13 batches is nan"))
    assert not retried(StorageError(28, "/art/model.pt"))
    assert retried(RuntimeError("a crash mid-step: the retry resumes from the checkpoint"))


# -------------------------------------------------------------------------------------- checkpoints in the train task


def test_a_prefect_retry_of_train_resumes_from_the_checkpoint(prefect_server, wandb_offline, tiny_mnist, tmp_path,
                                                             monkeypatch):
    """The train task fails mid-training (once); Prefect's retry resumes from the checkpoint, and says so."""
    real, attempts = training.train, []

    def crash_first_attempt(*a, **kw):
        attempts.append(1)
        if len(attempts) == 1:
            interrupt_training(monkeypatch, 11)  # InterruptedError after batch 11: checkpoints at 4, 8 (every 4)
        return real(*a, **kw)

    monkeypatch.setattr(training, "train", crash_first_attempt)
    cfg = PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 4, "log_every": 3},
        "wandb": {"mode": "offline"}, "artifacts_dir": str(tmp_path / "art"),
        "lineage_db": str(tmp_path / "lineage.db")}).resolved()

    from mnist_pipeline.tasks import prepare_data

    @flow(name="train-with-a-crash")
    def train_flow(cfg: PipelineConfig) -> ArtifactRef:
        return train(cfg, prepare_data(cfg))

    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    assert len(attempts) == 2
    store = LineageStore(cfg.lineage_db)
    trains = [r for r in store.runs() if r.job_type == "train"]
    assert [r.status for r in trains] == ["failed", "finished"]
    assert "InterruptedError" in trains[0].error
    [model] = store.artifacts("model")
    # 120 images / 16 = 8 batches an epoch; the last checkpoint before batch 11 was at batch 8 = end of epoch 0
    # where it resumed is the run's record (the model file is the same as an uninterrupted run's)
    assert trains[1].summary["resumed_from_checkpoint"] == {"epoch": 1, "batch": 0, "examples_seen": 120}
    assert model.metadata["examples_seen"] == 240 and model.metadata["batches"] == 16
    assert trains[1].summary["resumed"] is True
    assert not list((tmp_path / "art" / ".checkpoints").glob("*.pt"))  # done with once the model is recorded


def test_a_tampered_checkpoint_is_discarded_with_a_warning_and_training_starts_over(prefect_server, wandb_offline,
                                                                                   tiny_mnist, tmp_path, monkeypatch):
    from prefect import flow

    import mnist_pipeline.flows.pipeline  # noqa: F401 - puts the pipeline's warnings into the flow run's logs
    from mnist_pipeline import training
    from mnist_pipeline.tasks import prepare_data, train

    real, calls = training.train, []

    def crash_first(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            interrupt_training(monkeypatch, 6)  # a checkpoint at batch 4 (every 4), then a crash
        return real(*a, **kw)

    monkeypatch.setattr(training, "train", crash_first)
    cfg = PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 1, "batch_size": 16, "checkpoint_every": 4, "watch": False, "threads": 1},
        "wandb": {"mode": "offline"}, "artifacts_dir": str(tmp_path / "art"),
        "lineage_db": str(tmp_path / "lineage.db")}).resolved()

    @flow(name="train-once")
    def train_flow(cfg: PipelineConfig):
        return train.with_options(retries=0)(cfg, prepare_data(cfg))

    assert train_flow(cfg, return_state=True).is_failed()
    [ckpt] = (tmp_path / "art" / ".checkpoints").glob("train-*.pt")
    assert json.loads(training.sidecar(ckpt).read_text())["position"]["examples_seen"] == 64
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # a flipped bit: the file still loads
    ckpt.write_bytes(bytes(blob))

    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    logs = flow_run_logs(state.state_details.flow_run_id, "discarding checkpoint")
    assert any(re.search(r"discarding checkpoint .*train-\w+\.pt: sha256 \w{16} does not match the recorded \w{16}: "
                         r"changed since it was written; training from the start", m) for m in logs), logs
    store = LineageStore(cfg.lineage_db)
    [model] = store.artifacts("model")
    [trained] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"]
    assert trained.summary["resumed_from_checkpoint"] is None  # how the run went is the run's record
    assert model.metadata["examples_seen"] == 120 and model.metadata["batches"] == 8  # the whole epoch, again
    assert [(j, s) for j, s, _ in store_state(cfg.lineage_db) if j == "train"] == [("train", "failed"),
                                                                                    ("train", "finished")]
    assert not list((tmp_path / "art" / ".checkpoints").iterdir())  # checkpoint and record gone once recorded


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)  # what unpickling would do, if it were allowed to run code


def test_a_checkpoint_that_would_run_code_is_not_loaded_and_training_starts_over(tmp_path, caplog):
    from mnist_pipeline.data import Split
    from mnist_pipeline.model import ConvNet, ModelConfig
    from tests.helpers import tiny_digits

    marker, ckpt = tmp_path / "code-ran", tmp_path / "train-x.pt"
    torch.save({"model": _RunsCode(marker), "epoch": 1, "batch": 0, "examples_seen": 1, "batches": 1}, ckpt)
    # with a record that vouches for it (its digest), so that only weights_only stands in the way
    training.sidecar(ckpt).write_text(json.dumps({"sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
                                                  "lineage": None}))
    images, labels = tiny_digits(64, 0)
    settings = training.LoopSettings(epochs=1, batch_size=16, checkpoint_every=2, progress=False)
    with caplog.at_level("WARNING"):
        result = training.train(ConvNet(ModelConfig(kernels=(4, 8))), Split(torch.from_numpy(images),
                                torch.from_numpy(labels).long()), settings, torch.device("cpu"), checkpoint=ckpt)
    assert not marker.exists()  # no code ran
    assert result.resumed_from is None and result.examples_seen == 64  # started over, did not fail
    assert "ignoring unreadable checkpoint" in caplog.text
    assert torch.load(ckpt, weights_only=True)["batches"] == 4  # replaced by a real checkpoint



def test_the_progress_bar_writes_no_carriage_returns_off_a_terminal(capsys, monkeypatch):
    """A log file or a CI console gets no '\\r'-redrawn bar (tqdm draws only on a terminal); on one, it draws."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    settings = training.LoopSettings(epochs=1, batch_size=100, log_every=5, progress=True)
    training.train(ConvNet(ModelConfig(kernels=(4, 8))), _split(200), settings, torch.device("cpu"))
    assert "\r" not in capsys.readouterr().err  # pytest's stderr is no terminal
    tty = Terminal()
    monkeypatch.setattr("sys.stderr", tty)
    training.train(ConvNet(ModelConfig(kernels=(4, 8))), _split(200), settings, torch.device("cpu"))
    assert "\r" in tty.getvalue() and "train" in tty.getvalue()
