"""Equal inputs give equal files: training and ONNX export are bit-identical across processes on CPU."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

from mnist_pipeline import onnx_io
from mnist_pipeline.model import ConvNet, ModelConfig, save_model

REPO = Path(__file__).resolve().parents[1]

# One training + both exports, in a fresh process, the way the train and export-onnx tasks do it.
SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from mnist_pipeline import stage_files, training
    from mnist_pipeline.data import Split
    from prefect_wandb.refs import manifest, manifest_digest
    out, threads = Path(sys.argv[1]), int(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(160) % 10
    images = torch.randint(0, 40, (160, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 2 * c + 2 : 2 * c + 6, 4:24] = 255
    split = Split(images, labels)
    training.seed_everything(3)
    training.set_threads(threads)
    settings = training.LoopSettings(epochs=2, batch_size=16, seed=3, progress=False)
    (out / "model").mkdir(parents=True)
    stage_files.train_model_files(out / "model", split, kernels=(4, 8), classes=10, settings=settings,
                              fingerprint={"seed": 3}, device=torch.device("cpu"))
    digests = {"model": manifest_digest(manifest(out / "model"))}
    for exporter in ("torchscript", "dynamo"):
        (out / exporter).mkdir()
        stage_files.export_onnx_files(out / "model" / "model.pt", out / exporter, opset=18, exporter=exporter)
        digests[exporter] = manifest_digest(manifest(out / exporter))
    print(json.dumps(digests))
""")


def _train_and_export(out: Path, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(threads)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_and_both_exports_are_bit_identical_in_two_processes(tmp_path):
    first = _train_and_export(tmp_path / "a", threads=2)
    second = _train_and_export(tmp_path / "b", threads=2)
    assert first == second
    for part in ("model", "torchscript", "dynamo"):  # every file, not only the digests over them
        for f in (tmp_path / "a" / part).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / part / f.name).read_bytes(), f"{part}/{f.name} differs"
    # nothing about how the run went is in the artifact's files
    meta = json.loads((tmp_path / "a" / "model" / "model_config.json").read_text())
    assert not {"train_seconds", "threads", "device", "resumed_from_checkpoint"} & set(meta)
    assert meta["examples_seen"] == 320 and meta["fingerprint"] == {"seed": 3}


def test_a_model_file_does_not_depend_on_its_file_name(tmp_path):
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(kernels=(4, 8)))
    save_model(model, tmp_path / "model.pt")
    save_model(model, tmp_path / "model.pt.1234-tmp")  # torch.save would name its zip root after the file
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "model.pt.1234-tmp").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_an_onnx_export_holds_no_source_paths_or_stack_traces(tmp_path, exporter):
    torch.manual_seed(0)
    onnx_io.export(ConvNet(ModelConfig(kernels=(4, 8))), tmp_path / "m.onnx", exporter=exporter)
    blob = (tmp_path / "m.onnx").read_bytes()
    assert str(REPO).encode() not in blob and b"stack_trace" not in blob and b".py\"" not in blob
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert not any(n.metadata_props or n.doc_string for n in proto.graph.node)
    assert proto.producer_version == torch.__version__.split("+")[0] or proto.producer_version == torch.__version__
