import contextlib
import json
import re

import pytest
import torch

from mnist_pipeline import training
from mnist_pipeline.data import Split
from mnist_pipeline.metrics import evaluate
from mnist_pipeline.model import ConvNet, ModelConfig
from tests.helpers import interrupt_training, tiny_digits


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
