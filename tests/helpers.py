"""Test helpers: tiny real-format MNIST IDX files (as torchvision's own MNIST test writes them), tiny configs and the
session's shared runs, wandb offline in a folder, and the environments, command lines and store checks of the tests
that run `mnist-pipeline run` as a process."""

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


def use_offline_wandb(mp, directory: Path) -> Path:
    """wandb offline in `directory` (made), silent, with no API key from the environment, set on `mp`."""
    directory.mkdir(exist_ok=True)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(directory))
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_API_KEY", raising=False)
    return directory


def signed_tiny_run_config(mp, tmp: Path, key: Path):
    """The config of a tiny offline run signed with `key` (wandb offline in tmp/wandb, no key from the
    environment), for the signing tests' module-scoped runs; `write_mnist(tmp / "src")` first."""
    from mnist_pipeline.config import SIGN_KEY_ENV

    use_offline_wandb(mp, tmp / "wandb")
    mp.delenv(SIGN_KEY_ENV, raising=False)
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

    from mnist_pipeline.cli.main import main
    from prefect_wandb.store import LineageStore

    src = base / "src"
    write_mnist(src)
    with pytest.MonkeyPatch.context() as mp:
        use_offline_wandb(mp, base / "wandb")
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
    from prefect_wandb.provenance import keys
    from prefect_wandb.store import LineageStore

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
                                              "mnist_pipeline", "prefect_wandb")]
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


# ------------------------------------------- the fault and reliability tests' helpers: runs, stores, the Prefect API

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "local-" + "5ec7e7f00dfacade0123456789abcdef0badc0de"  # planted: must be written nowhere
JOB_TYPES = {"prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote", "report"}


def api_url() -> str:
    """The Prefect API the `prefect_server` fixture set up (asserted to be set)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_server fixture sets PREFECT_API_URL"
    return url


def copy_sqlite(src: Path | str, dst: Path | str) -> Path:
    """A whole, consistent copy of an SQLite database, in use or not (SQLite's backup API), its WAL folded into the
    copy's file."""
    import sqlite3

    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
        b.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        a.close()
        b.close()
    return Path(dst)


def seed_prefect_home(home: Path, prefect_db: Path) -> Path:
    """Put the `prefect_db` fixture's database where a `prefect server start` with PREFECT_HOME=`home` looks for
    its own (`home/prefect.db`, Prefect's default): that server then skips the migrations. Returns `home`."""
    import shutil

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prefect_db, home / "prefect.db")
    return home


def _cli_env(base: Path, *, offline: bool, api: bool, extra: dict[str, str], prefect_db: Path | None = None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_"))}
    for d in ("home", "tmp", "wandb"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"), WANDB_DIR=str(base / "wandb"),
               WANDB_SILENT="true", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    if offline:
        env["WANDB_MODE"] = "offline"
    if api:
        env["PREFECT_API_URL"] = api_url()
    else:
        env["PREFECT_HOME"] = str(base / "home" / ".prefect")
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # 2 shared cores: it can be slow
        if prefect_db is not None:
            seed_prefect_home(base / "home" / ".prefect", prefect_db)
    env.update(extra)
    return env


def run_env(base: Path, **extra: str) -> dict:
    """A clean environment for `mnist-pipeline run` against the test server; HOME and TMPDIR of its own,
    so that everything the run writes, wherever wandb or Prefect put it, lies under `base`. wandb's mode is the
    command's flags' (no WANDB_MODE)."""
    return _cli_env(base, offline=False, api=True, extra=extra)


def offline_run_env(base: Path, *, api: bool = True, prefect_db: Path | None = None, **extra: str) -> dict:
    """`mnist-pipeline run`'s environment: wandb offline, HOME/TMPDIR under `base`, the test server (or none:
    then the CLI starts a Prefect server for the run, its database under `base/home`, seeded with `prefect_db`
    where given: `seed_prefect_home`)."""
    return _cli_env(base, offline=True, api=api, extra=extra, prefect_db=prefect_db)


def run_command(*args: str) -> list[str]:
    """`mnist-pipeline run *args` as a command line for this interpreter."""
    import sys

    return [sys.executable, "-m", "mnist_pipeline.cli.main", "run", *args]


def run_flags(base: Path, *, seed: int = 0) -> list[str]:
    """A run's folders under `base`, its seed, one thread and short ONNX timings, as `mnist-pipeline run` flags."""
    return ["--root", str(base / "data"), "--artifacts-dir", str(base / "art"), "--lineage-db",
            str(base / "lineage.db"), "--seed", str(seed), "--onnx-latency-samples", "20",
            "--onnx-throughput-batch", "32", "--evaluate-misclassified-table-rows", "8", "--threads", "1"]


def run_argv(base: Path, *args: str) -> list[str]:
    """`mnist-pipeline run` into `base` (data, art, lineage.db), one thread, no watch, short ONNX timings, `args`."""
    return run_command("--root", str(base / "data"), "--artifacts-dir", str(base / "art"), "--lineage-db",
                       str(base / "lineage.db"), "--threads", "1", "--no-watch", "--onnx-latency-samples", "20",
                       "--onnx-throughput-batch", "32", "--evaluate-misclassified-table-rows", "4", *args)


def last_line(text: str) -> str:
    """The last line of `text` that is not blank."""
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def _assert_sqlite_is_sound(db: Path) -> None:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def _assert_files_are_sound(store) -> None:
    from prefect_wandb.refs import verify_files

    for a in store.artifacts():
        verify_files(Path(a.path), a.files)


def assert_store_is_sound(store) -> None:
    """SQLite integrity holds and every recorded artifact's files are there, complete and unchanged."""
    _assert_sqlite_is_sound(store.path)
    _assert_files_are_sound(store)


def store_state(db: Path) -> list[tuple[str, str, str | None]]:
    """(job_type, status, error) of every run, after checking SQLite's integrity and every artifact's files."""
    from prefect_wandb.store import LineageStore

    _assert_sqlite_is_sound(db)
    store = LineageStore(db)
    _assert_files_are_sound(store)
    return [(r.job_type, r.status, r.error) for r in store.runs()]


def leftovers(base: Path) -> list[Path]:
    """Temporary or half-written files anywhere under `base`."""
    return [p for p in base.rglob("*") if p.is_file() and (p.name.endswith((".partial", ".tmp"))
                                                           or ".incoming-" in str(p) or "/.staging/" in str(p))]


def wandb_runs(wandb_dir: Path) -> dict:
    """run id -> (job_type, group, [(artifact name, aliases)], history rows) of every offline run on disk."""
    import json

    from prefect_wandb.wandb.run_file import offline_records

    runs = {}
    for f in wandb_dir.rglob("offline-run-*/run-*.wandb"):
        recs = list(offline_records(f))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        arts = [(r.artifact.name, sorted(r.artifact.aliases)) for r in recs
                if r.WhichOneof("record_type") == "artifact" and r.artifact.type != "run_table"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        runs[run.run_id] = (run.job_type, run.run_group, arts, history)
    return runs


def flow_run(flow_run_id: str):
    """The flow run as the Prefect API holds it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def task_runs(flow_run_id) -> list:
    """The task runs of the flow run in the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def flow_run_logs(flow_run_id: str, containing: str | None = None, timeout: float = 15) -> list[str]:
    """The flow run's logs in the Prefect API: as they are now, or, given `containing`, once one contains it (logs
    are sent in batches; at most `timeout` s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
        if containing is None or any(containing in m for m in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def run_payload(payload: dict):
    """A flow run created through the Prefect API with this parameter payload (as the UI or
    `run_deployment` would), then executed by the engine the way a worker does."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    with get_client(sync_client=True) as client:
        fr = client.create_flow_run(mnist_lineage_pipeline, parameters={"config": payload})
    state = run_flow(mnist_lineage_pipeline, flow_run=fr, return_type="state")
    return fr, state


def synthetic_config(base: Path, train: int = 200, **over):
    """`tiny_config(base)` with `train` synthetic training images, batches of 32, one thread and no watch; `over`
    as for `tiny_config` (its `data` and `train` sections merged over these)."""
    data = {"synthetic_train": train, **over.pop("data", {})}
    train_over = {"batch_size": 32, "threads": 1, "watch": False, **over.pop("train", {})}
    return tiny_config(base, data=data, train=train_over, **over)


def prepare_table(settings, rows: str = "x,y\n1,2\n3,4\n"):
    """A `prepare` stage of the library (no Prefect) that produces a small dataset: `rows.csv` and a note in a
    subfolder; its ArtifactRef."""
    from prefect_wandb import open_stage

    with open_stage(settings, "prepare", config={"rows": rows}) as stage:
        out = stage.staging("table")
        (out / "rows.csv").write_text(rows)
        (out / "notes").mkdir()
        (out / "notes" / "source.txt").write_text("made by a test\n")
        stage.produce("table", "dataset", out)
    return stage.outputs["dataset"]


def fit_line(settings, data):
    """A `fit` stage that uses `data` (`prepare_table`'s) and produces a small model, `model.json`; its ArtifactRef."""
    import json

    from prefect_wandb import open_stage

    with open_stage(settings, "fit", config={"alpha": 0.1}) as stage:
        rows = (stage.use(data) / "rows.csv").read_text().splitlines()
        out = stage.staging("line")
        (out / "model.json").write_text(json.dumps({"alpha": 0.1, "rows": len(rows) - 1}) + "\n")
        stage.produce("line", "model", out)
    return stage.outputs["model"]
