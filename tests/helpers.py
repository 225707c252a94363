"""Test helpers: tiny real-format MNIST IDX files (as torchvision's own MNIST test writes them)."""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np

STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def free_port() -> int:
    """A loopback port free a moment ago (bound, then closed): for a server to start on, or, with nothing started
    there, a port where connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX as published: magic 0x0000080N (uint8 data, N dims), big-endian dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def tiny_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable toy: class c lights up a horizontal band at row 2c..2c+4, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 2 : 2 * c + 6, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(directory: Path, n_train: int = 120, n_test: int = 40, gz: bool = False) -> Path:
    raw = directory / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = tiny_digits(n, seed)
        for kind, arr in (("images", images), ("labels", labels)):
            blob = idx_bytes(arr)
            if gz:
                (raw / (STEMS[(split, kind)] + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (raw / STEMS[(split, kind)]).write_bytes(blob)
    return raw


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k", read_only: bool = False):
    """A small tmpfs at `path` (a real full or read-only disk); skips where mounting is not allowed."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll `predicate()` until it returns something truthy (returned), or fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def interrupt_training(monkeypatch, after_batches: int) -> None:
    """The next training stops with InterruptedError once `after_batches` batches are done (each with the
    checkpoint it was due), as a crash there would: the model's forward pass of the next batch raises. Later
    trainings run normally."""
    from mnist_pipeline.model import ConvNet

    real, calls = ConvNet.forward, [0]

    def forward(self, x):
        calls[0] += 1
        if calls[0] > after_batches:
            monkeypatch.setattr(ConvNet, "forward", real)
            raise InterruptedError(f"stopped after {after_batches} batches")
        return real(self, x)

    monkeypatch.setattr(ConvNet, "forward", forward)


def tiny_config(base: Path, src: Path | None = None, **over):
    """The tests' tiny offline run, its files under `base`: the IDX files of `write_mnist(src)` (else synthetic
    digits, 200 train / 50 test), slice 1, one epoch of batches of 16, short ONNX timings. `over`: a section's
    fields merged over these (`train={"learning_rate": 0.01}`), anything else as given (`force=True`)."""
    from mnist_pipeline.config import PipelineConfig

    data = {"source": "local", "local_dir": str(src)} if src else {
        "source": "synthetic", "synthetic_train": 200, "synthetic_test": 50}
    cfg: dict = {"data": {**data, "slice": 1, "root": str(base / "data")},
                 "train": {"epochs": 1, "batch_size": 16},
                 "onnx": {"latency_samples": 10, "throughput_batch": 16, "timing_seconds": 0.05},
                 "evaluate": {"misclassified_table_rows": 4}, "wandb": {"mode": "offline"},
                 "artifacts_dir": str(base / "art"), "lineage_db": str(base / "lineage.db")}
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return PipelineConfig.model_validate(cfg)


def signed_tiny_run_config(mp, tmp: Path, key: Path):
    """The config of a tiny offline run signed with `key` (wandb offline in tmp/wandb, no key from the
    environment), for the signing tests' module-scoped runs; `write_mnist(tmp / "src")` first."""
    from mnist_pipeline.config import SIGN_KEY_ENV

    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(tmp / "wandb"))
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv(SIGN_KEY_ENV, raising=False)
    (tmp / "wandb").mkdir()
    return tiny_config(tmp, tmp / "src", sign={"private_key": str(key)})


def offline_run_argv(src: Path, base: Path) -> list[str]:
    """`mnist-pipeline run`'s flags for the tests' tiny offline run of the IDX files under `src`, into `base`."""
    return ["run", "--source", "local", "--local-dir", str(src), "--slice", "1", "--epochs", "1", "--batch-size", "16",
            "--log-every", "4", "--root", str(base / "data"), "--artifacts-dir", str(base / "art"), "--lineage-db",
            str(base / "lineage.db"), "--wandb-mode", "offline", "--onnx-latency-samples", "20",
            "--onnx-throughput-batch", "32"]


def make_offline_run(base: Path) -> dict:
    """One real `mnist-pipeline run` of the CLI, in this process, on tiny IDX data (120 train / 40 test images),
    wandb offline in base/wandb: what it printed, its store, artifacts and runs by type, the files a user holds."""
    import contextlib
    import io
    import json

    import pytest

    from mnist_pipeline.flows.cli import main
    from mnist_pipeline.lineage.store import LineageStore

    src = base / "src"
    write_mnist(src)
    (base / "wandb").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(base / "wandb"))
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(offline_run_argv(src, base))
        assert code == 0, printed.getvalue()[-3000:]
    store = LineageStore(base / "lineage.db")
    arts = {a.type: a for a in store.artifacts()}
    runs = {r.job_type: r for r in store.runs()}
    return {"base": base, "db": base / "lineage.db", "store": store, "arts": arts, "runs": runs, "src": src,
            "wandb_dir": base / "wandb", "summary": json.loads(printed.getvalue()),
            "onnx": Path(arts["onnx"].path) / "model.onnx", "model_pt": Path(arts["model"].path) / "model.pt"}


def make_signed_run(tmp: Path) -> dict:
    """A tiny offline run of the flow signed with a fresh key pair (`signed_tiny_run_config`), in this process: its
    summary, wall time and log lines, its store's artifacts and runs, the key pair and another public key."""
    import logging
    import time

    import pytest

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
    from mnist_pipeline.lineage.store import LineageStore
    from mnist_pipeline.provenance import keys

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(level=logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(self.format(record))

    write_mnist(tmp / "src")
    key, pub = keys.generate(tmp / "keys")
    other = keys.generate(tmp / "other")[1]
    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("", "prefect", "prefect.task_runs", "prefect.flow_runs",
                                              "mnist_pipeline")]
    for lg in loggers:
        lg.addHandler(collect)
    try:
        with pytest.MonkeyPatch.context() as mp:
            cfg = signed_tiny_run_config(mp, tmp, key)
            t0 = time.perf_counter()
            summary = mnist_lineage_pipeline(config=cfg).to_dict()
            wall = time.perf_counter() - t0
    finally:
        for lg in loggers:
            lg.removeHandler(collect)
    store = LineageStore(tmp / "lineage.db")
    arts = {a.type: a for a in store.artifacts()}
    return {"tmp": tmp, "db": tmp / "lineage.db", "key": key, "pub": pub, "other": other,
            "fp": keys.fingerprint(keys.load_public(pub)), "summary": summary, "wall": wall, "logs": collect.lines,
            "onnx": Path(summary["onnx_file"]), "copy": Path(summary["signed_onnx_file"]), "att": arts["attestation"],
            "arts": arts, "runs": {r.job_type: r for r in store.runs()}}
