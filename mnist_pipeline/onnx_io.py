"""ONNX export with a dynamic batch axis, and onnxruntime parity and speed against torch."""

from __future__ import annotations

import logging
import time
import typing
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_pipeline.config import INFERENCE_BATCH, LATENCY_SAMPLES, THROUGHPUT_BATCH, TIMING_SECONDS
from mnist_pipeline.data import Split, to_float
from mnist_pipeline.metrics import predict_logits

log = logging.getLogger(__name__)

if typing.TYPE_CHECKING:
    from typing import Any

    import onnx
    import onnxruntime as ort

    from mnist_pipeline.model import ConvNet

INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_PREFIX = "mnist_pipeline."  # the keys this pipeline writes into an ONNX file's metadata_props


class ParityError(RuntimeError):
    """onnxruntime's outputs differ from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportInfo:
    opset: int
    input_name: str
    output_name: str
    input_shape: list  # with "batch" for the dynamic axis
    ir_version: int
    producer: str
    exporter: str
    input_contract: dict  # what a caller must feed the model (see `input_contract`)
    provenance: dict  # the pointers written into the file's metadata_props (without the prefix)


def input_contract(model: ConvNet) -> dict:
    """What the exported graph expects, as `data.to_float` prepares it for training, evaluation and validation:
    uint8 pixels divided by 255 (so [0, 1]), no mean/std normalisation, NCHW with a dynamic batch axis."""
    return {"input_name": INPUT_NAME, "shape": ["batch", *model.cfg.input_shape], "dtype": "float32",
            "layout": "NCHW", "scaling": "pixel / 255 (uint8 0..255 to float 0..1)", "normalization": None,
            "output_name": OUTPUT_NAME, "output": f"float32 [batch, {model.cfg.classes}] logits (no softmax)"}


def metadata_props(provenance: dict, contract: dict) -> dict[str, str]:
    """metadata_props entries (strings) for the provenance pointers and the input contract."""
    import json

    out = {f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v) for k, v in provenance.items()}
    out[f"{METADATA_PREFIX}input_contract"] = json.dumps(contract, sort_keys=True)
    return out


def export(model: ConvNet, path: Path, opset: int = 18, exporter: str = "torchscript",
           provenance: dict | None = None) -> ExportInfo:
    """torch.onnx.export with a dynamic batch axis, then onnx.checker.

    `provenance`: pointers to where the file came from (producing run, dataset and model digests, git commit),
    written with the input contract into the file's metadata_props before anything hashes it: they travel with
    the file wherever it is copied.

    exporter="dynamo" is torch.export-based (PyTorch's default since 2.9; needs onnxscript); "torchscript" is the
    older tracer, deprecated in PyTorch but about 20x quicker to start for a model this small."""
    model = model.cpu().eval()
    example = torch.zeros(2, *model.cfg.input_shape)
    names: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                          external_data=False, verbose=False, **names)
    elif exporter == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # chosen knowingly (see the docstring)
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)
    else:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; use 'dynamo' or 'torchscript'")
    import onnx  # here, not at the top: the flow imports this module, and most of its runs export nothing

    proto = onnx.load(str(path))
    contract = input_contract(model)
    props = metadata_props(provenance or {}, contract)
    changed = _strip_provenance(proto)
    if provenance is not None:
        del proto.metadata_props[:]
        for k, v in sorted(props.items()):
            proto.metadata_props.add(key=k, value=v)
        changed = True
    if changed:
        onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    if isinstance(shape[0], int):
        raise RuntimeError(f"exported ONNX input has a fixed batch size {shape[0]}; expected a dynamic axis")
    opset_found = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return ExportInfo(opset=opset_found, input_name=proto.graph.input[0].name,
                      output_name=proto.graph.output[0].name, input_shape=shape, ir_version=proto.ir_version,
                      producer=f"{proto.producer_name} {proto.producer_version}", exporter=exporter,
                      input_contract=contract, provenance=dict(provenance or {}))


def read_metadata(path: Path) -> dict[str, str]:
    """This pipeline's metadata_props of an ONNX file (keys without the prefix)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def _strip_graph(graph) -> bool:
    changed = bool(graph.doc_string)
    graph.doc_string = ""
    for part in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for item in part:
            changed |= bool(getattr(item, "doc_string", "")) or bool(len(item.metadata_props))
            if hasattr(item, "doc_string"):
                item.doc_string = ""
            del item.metadata_props[:]
    changed |= bool(len(graph.metadata_props))
    del graph.metadata_props[:]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                changed |= _strip_graph(sub)
    return changed


def _strip_provenance(proto: onnx.ModelProto) -> bool:
    """Remove what records where and how the exporter ran rather than what the model computes.

    The dynamo exporter annotates every node with the Python stack that made it (absolute source paths and line
    numbers), its FX node and module scope: the same weights exported from another checkout, or after an unrelated
    edit that moved a line, would get another digest. Names, shapes, opsets, the ops and the weights stay, and so
    does `producer_version` (the torch that exported it: a real condition of bit-identity). True if anything went."""
    changed = _strip_graph(proto.graph)
    for fn in proto.functions:
        changed |= bool(fn.doc_string) or bool(len(fn.metadata_props))
        fn.doc_string = ""
        del fn.metadata_props[:]
        for node in fn.node:
            changed |= bool(node.doc_string) or bool(len(node.metadata_props))
            node.doc_string = ""
            del node.metadata_props[:]
    changed |= bool(proto.doc_string)
    proto.doc_string = ""
    return changed


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, images: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: to_float(images[i : i + batch_size]).numpy()})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@dataclass
class Validation:
    max_abs_diff: float
    argmax_agreement: float
    ort_accuracy: float
    torch_accuracy: float
    count: int
    latency_ms_p50: float
    latency_ms_p99: float
    throughput_batch: int
    ort_throughput_per_s: float
    torch_throughput_per_s: float
    passed: bool
    tolerance: float
    min_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000.0, q))


def latency(run_one, samples: int) -> tuple[float, float]:
    """p50 and p99 in ms of `run_one(i)` over `samples` calls, after a short warm-up."""
    for i in range(min(10, samples)):
        run_one(i)
    times = []
    for i in range(samples):
        t = time.perf_counter()
        run_one(i)
        times.append(time.perf_counter() - t)
    return _percentile_ms(times, 50), _percentile_ms(times, 99)


def throughput(run_batch, batch: torch.Tensor, min_seconds: float = 0.5) -> float:
    """Images per second of `run_batch(batch)`, repeated for at least `min_seconds` after one warm-up."""
    run_batch(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        run_batch(batch)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n >= 3:
            return n * len(batch) / elapsed


def validate(onnx_path: Path, model: torch.nn.Module, test: Split, *, atol: float, min_agreement: float,
             latency_samples: int = LATENCY_SAMPLES, throughput_batch: int = THROUGHPUT_BATCH,
             batch_size: int = INFERENCE_BATCH, timing_seconds: float = TIMING_SECONDS,
             torch_logits: np.ndarray | None = None) -> Validation:
    """Compare onnxruntime with torch on every test image; time both. Never raises on a parity miss:
    the caller decides (it records the report first, so a failed validation is still on file).

    `torch_logits`: the torch model's logits on `test` as an evaluation recorded them (the pipeline passes those
    of its metrics artifact: onnxruntime is then checked against the numbers the accuracy was measured on, and
    the test split is not run through torch a second time); computed here from `model` when not given. `model`
    is also what the torch throughput is timed on."""
    if torch_logits is not None and torch_logits.shape[0] != len(test):
        raise ValueError(f"the recorded torch logits cover {torch_logits.shape[0]} images, the test split has "
                         f"{len(test)}: they are not of this split")
    sess = session(onnx_path)
    model = model.cpu().eval()
    ort_out = ort_logits(sess, test.images, batch_size)
    torch_out = torch_logits if torch_logits is not None else predict_logits(model, test.images, batch_size).numpy()
    if torch_out.shape != ort_out.shape:
        raise ValueError(f"torch logits {tuple(torch_out.shape)} and onnxruntime logits {tuple(ort_out.shape)} differ "
                         "in shape: not the same model")
    labels = test.labels.numpy()
    max_diff = float(np.abs(ort_out - torch_out).max())
    agree = float((ort_out.argmax(1) == torch_out.argmax(1)).mean())

    name = sess.get_inputs()[0].name
    singles = to_float(test.images[:latency_samples])
    p50, p99 = latency(lambda i: sess.run(None, {name: singles[i % len(singles)][None].numpy()}), latency_samples)
    model = model.to(memory_format=torch.contiguous_format)  # torch eager as most users run it: NCHW
    big = to_float(test.images[:throughput_batch])
    if len(big) < throughput_batch:  # a tiny test split: tile it up to the requested batch
        big = big.repeat((throughput_batch + len(big) - 1) // len(big), 1, 1, 1)[:throughput_batch]
    big_np = big.numpy()
    ort_tp = throughput(lambda b: sess.run(None, {name: big_np}), big, timing_seconds)
    with torch.inference_mode():
        torch_tp = throughput(lambda b: model(b), big, timing_seconds)
    return Validation(
        max_abs_diff=max_diff, argmax_agreement=agree,
        ort_accuracy=float((ort_out.argmax(1) == labels).mean()),
        torch_accuracy=float((torch_out.argmax(1) == labels).mean()), count=len(labels),
        latency_ms_p50=p50, latency_ms_p99=p99, throughput_batch=throughput_batch,
        ort_throughput_per_s=ort_tp, torch_throughput_per_s=torch_tp,
        passed=max_diff <= atol and agree >= min_agreement, tolerance=atol, min_agreement=min_agreement)
