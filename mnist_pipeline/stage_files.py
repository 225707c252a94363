"""What a stage writes into its artifact folder, as pure functions of its inputs (no Prefect, no W&B).

The train, export-onnx and evaluate tasks call these; `mnist-pipeline reproduce` calls the same functions with
the recorded config, seed and thread count, so a reproduction runs exactly the code that made the artifact.

Bit-identity (same files, same digest) holds on CPU for: the same dataset artifact, the same training config and
seed, the same intra-op thread count (recorded in the train run's summary; oneDNN splits reductions by thread),
the same torch build (`torch.__version__`, including its `+cu130`/`+cpu` tag) and onnx version, and the same CPU
instruction set family (oneDNN picks kernels by ISA: AVX-512 and AVX2 machines may differ in the last bits).
Nothing else enters the files: no wall time, host, path, thread count or device.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mnist_pipeline import metrics, onnx_io, training
from mnist_pipeline.data import Split
from mnist_pipeline.model import ConvNet, ModelConfig, load_model, save_model
from prefect_wandb import write_bytes_atomic, write_json

MODEL_FILES = ("model.pt", "model_config.json")
LOGITS_FILE = "logits.npy"  # in the metrics artifact: the evaluated model's logits, float32 [test images, classes]


def train_model_files(out: Path, split: Split, *, kernels, classes: int, settings: training.LoopSettings,
                      fingerprint: dict, device: torch.device, model: ConvNet | None = None, on_log=None,
                      checkpoint: Path | None = None, checkpoint_lineage: training.CheckpointLineage | None = None) -> tuple[ConvNet, training.TrainResult]:
    """Train a ConvNet (seeded beforehand by the caller) and write `model.pt` and `model_config.json` into `out`.

    Only what the weights are a function of goes into the files (they make the artifact's digest): how long it
    took, on how many threads, on which device and whether it resumed is the run's record, not the artifact's."""
    model = model if model is not None else ConvNet(ModelConfig(kernels=tuple(kernels), classes=classes))
    result = training.train(model, split, settings, device, on_log=on_log, checkpoint=checkpoint,
                            checkpoint_lineage=checkpoint_lineage)
    save_model(model, Path(out) / "model.pt")
    write_json(Path(out) / "model_config.json", model_file_metadata(model, settings, fingerprint, result))
    return model, result


def model_file_metadata(model: ConvNet, settings: training.LoopSettings, fingerprint: dict,
                        result: training.TrainResult) -> dict:
    return {"model_config": model.cfg.to_dict(), "fingerprint": fingerprint,
            "channels_last": settings.channels_last, "examples_seen": result.examples_seen,
            "batches": result.batches, "final_loss": result.final_loss}


def export_onnx_files(model_path: Path, out: Path, *, opset: int, exporter: str,
                      provenance: dict | None = None) -> onnx_io.ExportInfo:
    """`model.onnx` and `export.json` (with the input contract) from a model file; `provenance`: the pointers
    written into the file's metadata_props (`onnx_io.export`), part of its bytes: a reproduction passes the
    recorded ones."""
    info = onnx_io.export(load_model(model_path), Path(out) / "model.onnx", opset=opset, exporter=exporter,
                          provenance=provenance)
    write_json(Path(out) / "export.json", asdict(info))
    return info


def evaluate_files(model_path: Path, test: Split, out: Path, *, batch_size: int, misclassified_rows: int
                   ) -> tuple[metrics.Evaluation, list[dict], int]:
    """`metrics.json`: test loss, accuracy, per-class accuracy, the confusion matrix of a model file, and its first
    `misclassified_rows` misclassified test images (index into the test split, prediction, label) with their count;
    `logits.npy`: the logits every figure was computed from (the ONNX validation checks onnxruntime against them,
    so the exported file is tied to the very numbers the accuracy was measured on).
    Returns the evaluation, that list and the count."""
    net = load_model(model_path)
    ev = metrics.evaluate(net, test, net.cfg.classes, batch_size)
    wrong, count = metrics.misclassified(ev.predictions, test.labels, misclassified_rows)
    write_json(Path(out) / "metrics.json", {**ev.summary(), "misclassified": wrong, "misclassified_count": count})
    buf = io.BytesIO()
    np.save(buf, ev.logits.numpy().astype(np.float32, copy=False), allow_pickle=False)
    write_bytes_atomic(Path(out) / LOGITS_FILE, buf.getbuffer())
    return ev, wrong, count


def load_logits(metrics_dir: Path) -> np.ndarray:
    """The logits an evaluation recorded (see `evaluate_files`)."""
    return np.load(Path(metrics_dir) / LOGITS_FILE, allow_pickle=False)
