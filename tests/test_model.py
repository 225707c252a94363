import pickle

import pytest
import torch

from mnist_pipeline.model import ConvNet, ModelConfig, load_model, pick_device, save_model


@pytest.mark.parametrize("kernels, classes", [((16, 32), 10), ((8, 4), 3), ((5, 7), 10)])
def test_shapes_follow_the_config(kernels, classes):
    model = ConvNet(ModelConfig(kernels=kernels, classes=classes))
    assert model.layer2[0].in_channels == kernels[0]  # not the tutorial's hard-coded 16
    assert model.fc.in_features == 7 * 7 * kernels[1]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, classes)


def test_weights_file_rebuilds_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(kernels=(6, 12), classes=10))
    save_model(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.cfg == model.cfg
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(back(x), model.eval()(x))


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def test_loading_never_executes_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model_config": {}, "state_dict": _Boom()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_model(path)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
