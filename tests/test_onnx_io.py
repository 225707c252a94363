import numpy as np
import onnx
import pytest
import torch

from mnist_pipeline import onnx_io
from mnist_pipeline.data import Split
from mnist_pipeline.metrics import predict_logits
from mnist_pipeline.model import ConvNet, ModelConfig
from tests.helpers import tiny_digits


@pytest.fixture(scope="module", params=[pytest.param("dynamo", marks=pytest.mark.slow), "torchscript"])
def exported(tmp_path_factory, request):
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(kernels=(4, 8))).eval()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    info = onnx_io.export(model, path, opset=18, exporter=request.param)
    return model, path, info


def test_export_has_a_dynamic_batch_axis_and_passes_the_checker(exported):
    _model, path, info = exported
    onnx.checker.check_model(onnx.load(str(path)))
    assert (info.input_name, info.output_name, info.opset) == ("images", "logits", 18)
    assert isinstance(info.input_shape[0], str) and info.input_shape[1:] == [1, 28, 28]
    sess = onnx_io.session(path)
    for batch in (1, 7):
        out = sess.run(None, {"images": np.zeros((batch, 1, 28, 28), np.float32)})[0]
        assert out.shape == (batch, 10)


def test_onnxruntime_matches_torch(exported):
    model, path, _ = exported
    images, labels = tiny_digits(50, 4)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    v = onnx_io.validate(path, model, split, atol=1e-4, min_agreement=1.0, latency_samples=10, throughput_batch=64)
    assert v.passed and v.max_abs_diff < 1e-4 and v.argmax_agreement == 1.0
    assert v.ort_accuracy == v.torch_accuracy and v.count == 50
    assert 0 < v.latency_ms_p50 <= v.latency_ms_p99 and v.ort_throughput_per_s > 0 and v.torch_throughput_per_s > 0


def test_parity_failure_is_reported_not_hidden(exported):
    _model, path, _ = exported
    torch.manual_seed(1)
    other = ConvNet(ModelConfig(kernels=(4, 8))).eval()  # not the model that was exported
    images, labels = tiny_digits(30, 5)
    v = onnx_io.validate(path, other, Split(torch.from_numpy(images), torch.from_numpy(labels).long()),
                         atol=1e-4, min_agreement=0.99, latency_samples=10, throughput_batch=8)
    assert not v.passed and v.max_abs_diff > 1e-4


def test_parity_is_checked_against_recorded_logits_when_given(exported):
    """The pipeline passes the logits its evaluation recorded: those are the reference, not a fresh torch pass."""
    model, path, _ = exported
    images, labels = tiny_digits(40, 6)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    reference = predict_logits(model, split.images).numpy()
    v = onnx_io.validate(path, model, split, atol=1e-4, min_agreement=1.0, latency_samples=5, throughput_batch=8,
                         torch_logits=reference)
    assert v.passed and v.max_abs_diff < 1e-4
    shifted = reference.copy()
    shifted[3] += 0.5  # a recorded evaluation that is not of this ONNX file's model
    v = onnx_io.validate(path, model, split, atol=1e-4, min_agreement=1.0, latency_samples=5, throughput_batch=8,
                         torch_logits=shifted)
    assert not v.passed and abs(v.max_abs_diff - 0.5) < 1e-3
    with pytest.raises(ValueError, match="cover 39 images, the test split has 40"):
        onnx_io.validate(path, model, split, atol=1e-4, min_agreement=1.0, latency_samples=5, throughput_batch=8,
                         torch_logits=reference[:39])
