import torch

from mnist_pipeline import training
from mnist_pipeline.data import Split
from mnist_pipeline.metrics import evaluate
from mnist_pipeline.model import ConvNet, ModelConfig
from tests.helpers import tiny_digits


def _split(n=400, seed=0):
    images, labels = tiny_digits(n, seed)
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


def _run(tmp_path=None, stop=None, epochs=2, log=None, ckpt=None):
    training.seed_everything(3)
    model = ConvNet(ModelConfig(kernels=(4, 8)))
    settings = training.LoopSettings(epochs=epochs, batch_size=32, learning_rate=0.005, seed=3, log_every=5,
                                     checkpoint_every=4, progress=False)
    result = training.train(model, _split(), settings, torch.device("cpu"), on_log=log, checkpoint=ckpt,
                            stop_after_batches=stop)
    return model, result


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


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    try:
        _run(stop=17, ckpt=ckpt)
    except InterruptedError:
        pass
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["batch"], state["batches"]) == (1, 3, 16)  # last checkpoint: batch 16
    resumed, result = _run(ckpt=ckpt)
    assert result.resumed_from == {"epoch": 1, "batch": 3, "examples_seen": 400 + 3 * 32}
    straight, _ = _run()
    for (k, va), vb in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
