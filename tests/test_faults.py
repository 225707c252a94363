"""Reliability, round 2 (issue 10): no false alarm, no silent acceptance, no hang, nothing left behind.

Faults at real boundaries: a loopback server that accepts and never answers, a small tmpfs that fills up (ENOSPC)
or is mounted read-only (EROFS), signals sent to a real `mnist-pipeline run` process, flipped bytes in real files,
a real `prefect server start` behind basic auth. Each test checks the message, the exit code and the store.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import verify_files
from mnist_pipeline.lineage.store import LineageStore
from tests.helpers import interrupt_training, tiny_config, tmpfs, write_mnist

REPO = Path(__file__).resolve().parents[1]
FAULT_TIMEOUT = float(os.environ.get("MNIST_TEST_FAULT_TIMEOUT", "0.5"))  # seconds a dead mirror is waited for


# ------------------------------------------------------------------------------------------------ helpers


def _env(base: Path, *, api: bool = True, **extra: str) -> dict:
    """`mnist-pipeline run`'s environment: wandb offline, HOME/TMPDIR under `base`, the test server (or none:
    then the CLI starts Prefect's temporary server, its database under `base/home`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_"))}
    for d in ("home", "tmp", "wandb"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"), WANDB_DIR=str(base / "wandb"), WANDB_MODE="offline",
               WANDB_SILENT="true", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    if api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    else:
        env["PREFECT_HOME"] = str(base / "home" / ".prefect")
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # 2 shared cores: it can be slow
    env.update(extra)
    return env


def _argv(base: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_pipeline.flows.cli", "run", "--root", str(base / "data"), "--artifacts-dir",
            str(base / "art"), "--lineage-db", str(base / "lineage.db"), "--threads", "1", "--no-watch",
            "--onnx-latency-samples", "20", "--onnx-throughput-batch", "32",
            "--evaluate-misclassified-table-rows", "4", *args]


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def _store_state(db: Path) -> list[tuple[str, str, str | None]]:
    """(job_type, status, error) of every run, after checking SQLite's integrity and every artifact's files."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()
    store = LineageStore(db)
    for a in store.artifacts():
        verify_files(Path(a.path), a.files)
    return [(r.job_type, r.status, r.error) for r in store.runs()]


def _leftovers(base: Path) -> list[Path]:
    """Temporary or half-written files anywhere under `base`."""
    return [p for p in base.rglob("*") if p.is_file() and (p.name.endswith((".partial", ".tmp"))
                                                           or ".incoming-" in str(p) or "/.staging/" in str(p))]


def _flow_run_logs(flow_run_id: str, containing: str = "", timeout: float = 15) -> list[str]:
    """The flow run's logs in the Prefect API, once one contains `containing` (logs are sent in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
        if any(containing in m for m in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


# --------------------------------------------------------------------------- expected failures: one line


@pytest.mark.slow
def test_an_expected_failure_ends_with_one_line_and_its_traceback_stays_in_the_prefect_logs(prefect_server, tmp_path):
    raw = write_mnist(tmp_path / "src")
    victim = raw / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    proc = subprocess.run(_argv(tmp_path, "--source", "local", "--local-dir", str(tmp_path / "src"), "--slice", "1",
                                "--epochs", "1"), cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == (f"mnist-pipeline: pipeline failed: DataError: {victim}: truncated IDX file: "
                                       "93996 bytes, header promises 94096")
    assert _store_state(tmp_path / "lineage.db") == [("prepare-data", "failed", _last_line(proc.stderr).split(
        "pipeline failed: ")[1])]
    assert _leftovers(tmp_path) == []
    # the full traceback is still in the flow run's logs in Prefect
    from prefect.client.orchestration import get_client

    [run] = LineageStore(tmp_path / "lineage.db").runs()
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.flow_run_id).state
    assert state.is_failed()
    logs = _flow_run_logs(run.flow_run_id, "Traceback")
    assert any("Traceback" in m and "truncated IDX file" in m for m in logs), logs


def test_an_unexpected_error_keeps_its_traceback_on_the_console():
    from mnist_pipeline.data import ChecksumError
    from mnist_pipeline.flows import console
    from mnist_pipeline.storage import StorageError

    assert console.is_expected(ChecksumError("x")) and console.is_expected(StorageError(28, "/p"))
    assert console.is_expected(OSError(28, "No space left on device"))
    assert not console.is_expected(KeyError("x")) and not console.is_expected(OSError(5, "I/O error"))
    from mnist_pipeline.training import TrainingDiverged

    assert console.is_expected(TrainingDiverged("training diverged: the loss after 13 batches is nan"))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ChecksumError("x")
    assert console.is_expected(wrapped)


# --------------------------------------------------------------------------- a mirror that never answers


@pytest.mark.slow
def test_a_mirror_that_accepts_and_never_answers_times_out_is_retried_and_fails_with_one_line(prefect_server,
                                                                                            tmp_path):
    silent = socket.socket()  # the kernel accepts connections into the backlog; nobody ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    mirror = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        t0 = time.monotonic()
        proc = subprocess.run(_argv(tmp_path, "--source", "download", "--mirrors", mirror, "--timeout",
                                    str(FAULT_TIMEOUT), "--retries", "1", "--retry-delay", "0"),
                              cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
    finally:
        silent.close()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(rf"mnist-pipeline: pipeline failed: DownloadError: train-images-idx3-ubyte.gz: no mirror "
                        rf"delivered it: {mirror}train-images-idx3-ubyte.gz: no answer within {FAULT_TIMEOUT:g} s "
                        r"\(data.timeout\)", _last_line(proc.stderr)), _last_line(proc.stderr)
    runs = _store_state(tmp_path / "lineage.db")
    assert [(j, s) for j, s, _ in runs] == [("prepare-data", "failed")] * 2  # the documented retry, then no more
    assert seconds < 60
    assert _leftovers(tmp_path) == [] and not list((tmp_path / "data").rglob("*.gz"))


# --------------------------------------------------------------------------- full and read-only disks


def test_a_full_disk_is_named_in_one_line_not_retried_and_leaves_nothing_behind(prefect_server, tmp_path):
    with tmpfs(tmp_path / "art", size="256k"):
        proc = subprocess.run(_argv(tmp_path, "--source", "synthetic", "--synthetic-train", "1000",
                                    "--synthetic-test", "100", "--slice", "1", "--epochs", "1"),
                              cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        line = _last_line(proc.stderr)
        assert re.fullmatch(rf"mnist-pipeline: pipeline failed: StorageError: No space left on device while writing "
                            rf"{tmp_path}/art/.staging/\w+/mnist/train.pt \(not retried: it would fail the same way\)",
                            line), line
        assert [p for p in (tmp_path / "art").rglob("*") if p.is_file()] == []  # no 0-byte or partial file
    runs = _store_state(tmp_path / "lineage.db")
    assert [(j, s) for j, s, _ in runs] == [("prepare-data", "failed")]  # once: not retried
    assert "No space left on device while writing" in runs[0][2]
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_an_artifacts_folder_turned_read_only_mid_stage_names_the_file_and_leaves_no_staging_behind(
        wandb_offline, tmp_path):
    """The disk under the artifacts folder is remounted read-only while a stage (in a process of its own) writes its
    outputs: the error names the file meant (not its temporary name), the run is failed, and the staging folder the
    failed process could not delete is removed by a later process's stage once the disk is writable again."""
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"),
                                         "lineage_db": str(tmp_path / "lineage.db"),
                                         "wandb": {"mode": "offline"}}).resolved()
    stage_code = """import subprocess, sys
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.storage import StorageError, write_json
cfg = PipelineConfig.model_validate_json(sys.argv[1])
try:
    with open_stage(cfg, sys.argv[2]) as stage:
        if sys.argv[2] == "train":
            out = stage.staging("convnet")
            subprocess.run(["mount", "-o", "remount,ro", str(cfg.artifacts_dir)], check=True)
            write_json(out / "model_config.json", {"kernels": [4, 8]})
except StorageError as e:
    sys.exit(f"StorageError: {e}")
"""

    def stage(job_type: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", stage_code, cfg.model_dump_json(), job_type], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    staging = tmp_path / "art" / ".staging"
    with tmpfs(tmp_path / "art", size="1m"):
        proc = stage("train")
        [failed] = LineageStore(cfg.lineage_db).runs()
        out = staging / failed.run_id / "convnet"
        assert proc.returncode == 1 and _last_line(proc.stderr) == (
            f"StorageError: Read-only file system while writing {out / 'model_config.json'}"), proc.stderr[-2000:]
        assert failed.status == "failed" and "Read-only file system" in failed.error
        assert [p.name for p in staging.iterdir()] == [failed.run_id]  # the failed process could not delete it
        subprocess.run(["mount", "-o", "remount,rw", str(tmp_path / "art")], check=True)
        proc = stage("evaluate")  # a later run's stage removes what the ended process left
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert list(staging.iterdir()) == []
        assert [p for p in (tmp_path / "art").rglob("*") if p.is_file()] == []


def test_an_unwritable_wandb_folder_fails_before_any_work_with_one_line(tmp_path):
    with tmpfs(tmp_path / "wandb-ro", read_only=True):
        env = _env(tmp_path, api=False)
        proc = subprocess.run(_argv(tmp_path, "--source", "synthetic", "--wandb-dir", str(tmp_path / "wandb-ro")),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"mnist-pipeline: cannot run here: Read-only file system while preparing "
                                   f"wandb.dir {tmp_path / 'wandb-ro'}")
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "home" / ".prefect").exists()  # no work


# --------------------------------------------------------------------------- SIGTERM and Ctrl-C


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _signal_mid_training(argv: list[str], env: dict, sig: int, *, before=None) -> tuple[int, str, float, Any]:
    """Start `argv`, wait until its stderr says training on 20000 images is under way (and a second more), call
    `before(pid)`, then send `sig` to the process only, as a scheduler or a shell's Ctrl-C would. Returns the exit
    code, the whole stderr, the seconds from the signal to the exit, and what `before` returned."""
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            err.append(line)
            if "training on 20000 images" in line:
                break
            assert time.monotonic() < deadline
        time.sleep(1)
        seen = before(proc.pid) if before else None
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        _out, rest = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, "".join(err) + rest, seconds, seen


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_in_seconds_with_one_line_and_everything_recorded(tmp_path, sig):
    """Against Prefect's own temporary server, which a run starts when none is configured (what a cron job gets):
    the server must go too."""
    argv = _argv(tmp_path, "--source", "synthetic", "--synthetic-train", "20000", "--synthetic-test", "100",
                 "--slice", "1", "--epochs", "5", "--batch-size", "32")
    env = _env(tmp_path, api=False)
    code, stderr, seconds, _ = _signal_mid_training(argv, env, sig)
    name = signal.Signals(sig).name
    assert code == 128 + sig, stderr[-3000:]
    assert seconds < 20, seconds
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _last_line(stderr).startswith(f"mnist-pipeline: terminated by {name}"), stderr[-2000:]
    runs = _store_state(tmp_path / "lineage.db")
    assert ("prepare-data", "finished", None) in runs
    [train] = [r for r in runs if r[0] == "train"]
    assert train[1] == "failed" and train[2].endswith(f"terminated by {name}" + (" (Ctrl-C)" if sig == 2 else ""))
    # the server is gone (Prefect stops it as the process exits), and its database says the flow run crashed
    found = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", stderr)
    assert found, stderr[-3000:]
    port, deadline = int(found.group(1)), time.monotonic() + 20
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _port_open(port)
    db = next((tmp_path / "home" / ".prefect").rglob("*.db"))
    con = sqlite3.connect(db)
    try:
        states = [s for (s,) in con.execute("SELECT state_type FROM flow_run")]
    finally:
        con.close()
    assert states in (["CRASHED"], ["CANCELLED"]), states


def _descendants(pid: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, set()).add(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.add(c)
            todo.append(c)
    return out


@pytest.mark.slow
def test_sigterm_ends_a_sweep_with_one_line_and_takes_its_server_and_cluster_along(tmp_path):
    """`mnist-pipeline sweep` with no configured server starts Prefect's temporary one and a local Dask cluster;
    SIGTERM in the middle of a trial must end it in seconds, exit 143, and leave none of its processes behind."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("method: grid\nmetric: {name: test_accuracy, goal: maximize}\n"
                     "parameters:\n  train.learning_rate: {values: [0.001, 0.01]}\n")
    argv = [sys.executable, "-m", "mnist_pipeline.flows.cli", "sweep", "--sweep", str(sweep), "--source", "synthetic",
            "--synthetic-train", "20000", "--synthetic-test", "100", "--slice", "1", "--epochs", "5", "--workers", "1",
            "--root", str(tmp_path / "data"), "--artifacts-dir", str(tmp_path / "art"),
            "--lineage-db", str(tmp_path / "lineage.db")]
    code, stderr, seconds, ours = _signal_mid_training(argv, _env(tmp_path, api=False), signal.SIGTERM,
                                                       before=_descendants)  # its server, Dask worker, wandb...
    assert ours
    assert code == 143, stderr[-3000:]
    assert seconds < 30, seconds
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "mnist-pipeline: terminated by SIGTERM: the sweep's Prefect flow run is marked crashed" in stderr
    deadline = time.monotonic() + 20
    while (left := {p for p in ours if Path(f"/proc/{p}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120] for p in left]


# --------------------------------------------------------------------------- deployments: merge and confine


def _deployment_run(name: str, payload: dict):
    """A flow run of deployment `name` created through the API with this `config` payload (as the UI's Run form
    or `run_deployment` would), executed here the way a worker does."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"mnist-lineage-pipeline/{name}")
        fr = client.create_flow_run_from_deployment(dep.id, parameters={"config": payload})
    return fr, run_flow(mnist_lineage_pipeline, flow_run=fr, return_type="state")


def _task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_a_deployment_run_merges_a_partial_config_and_is_confined_to_the_deployment_folders(
        prefect_server, wandb_offline, tmp_path, monkeypatch):
    from mnist_pipeline.config import ALLOWED_ROOTS_ENV, ConfigError
    from mnist_pipeline.deployments.serve import MANUAL, build_deployments

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    srv = tmp_path / "srv"
    served = tiny_config(srv, train={"batch_size": 32, "threads": 1, "watch": False}, wandb={"dir": str(srv / "wandb")})
    for dep in build_deployments(served, paused=True):
        dep.apply()

    # a partial payload: only the seed; everything else is the deployment's, not the code's defaults
    fr, state = _deployment_run(MANUAL, {"train": {"seed": 7}})
    assert state.is_completed(), state.message
    summary = state.result().to_dict()
    assert summary["config_sources"]["train.seed"] == "run parameters"
    assert summary["config_sources"]["data.source"] == "deployment defaults"
    assert summary["config_sources"]["artifacts_dir"] == "deployment defaults"
    store = LineageStore(srv / "lineage.db")
    [train] = [r for r in store.runs() if r.job_type == "train"]
    assert train.config["train"]["seed"] == 7 and train.config["train"]["epochs"] == 1
    assert train.config["data"]["source"] == "synthetic"  # not the code default 'download'
    logs = _flow_run_logs(fr.id, "config of deployment")
    assert any("config of deployment 'manual': from the run parameters: train.seed=7; from the deployment "
               "defaults:" in m for m in logs), logs

    # a path outside the deployment's folders is refused before any task, naming the field
    elsewhere = tmp_path / "elsewhere"
    for payload, field in (({"artifacts_dir": str(elsewhere / "art")}, "artifacts_dir"),
                           ({"wandb": {"dir": str(elsewhere / "w"), "mode": "offline"}}, "wandb.dir"),
                           ({"data": {"source": "synthetic", "root": "/etc/mnist"}}, "data.root")):
        fr, state = _deployment_run(MANUAL, payload)
        assert state.is_failed()
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .* outside the allowed roots .* \(the folders "
                           r"deployment 'manual' was served with; "):
            state.result()
        assert _task_runs(fr.id) == []
    assert not elsewhere.exists() and not Path("/etc/mnist").exists()
    assert {r.status for r in store.runs()} == {"finished"}  # the refused runs left no trace in the store
    _store_state(srv / "lineage.db")


@pytest.mark.slow
def test_a_shared_server_behind_basic_auth_refuses_an_unauthenticated_client(tmp_path, monkeypatch):
    """A real `prefect server start` on loopback with PREFECT_SERVER_API_AUTH_STRING (the README's recipe)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from mnist_pipeline.flows.local_server import local_prefect_server

    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:s3cret-for-tests")
    with local_prefect_server(home=tmp_path / "home") as url:
        request = urllib.request.Request(f"{url}/deployments/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 401
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client, \
                pytest.raises(httpx.HTTPStatusError, match="401"):
            client.read_deployments()
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: "admin:s3cret-for-tests"}), \
                get_client(sync_client=True) as client:
            assert client.read_deployments() == []
        request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:wrong").decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 401


# --------------------------------------------------------------------------- a tampered checkpoint


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
    logs = _flow_run_logs(state.state_details.flow_run_id, "discarding checkpoint")
    assert any(re.search(r"discarding checkpoint .*train-\w+\.pt: sha256 \w{16} does not match the recorded \w{16}: "
                         r"changed since it was written; training from the start", m) for m in logs), logs
    store = LineageStore(cfg.lineage_db)
    [model] = store.artifacts("model")
    [trained] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"]
    assert trained.summary["resumed_from_checkpoint"] is None  # how the run went is the run's record
    assert model.metadata["examples_seen"] == 120 and model.metadata["batches"] == 8  # the whole epoch, again
    assert [(j, s) for j, s, _ in _store_state(cfg.lineage_db) if j == "train"] == [("train", "failed"),
                                                                                     ("train", "finished")]
    assert not list((tmp_path / "art" / ".checkpoints").iterdir())  # checkpoint and record gone once recorded


# --------------------------------------------------------------------------- the lineage store and the audit


def _config(base: Path, train: int = 200, **over) -> PipelineConfig:
    data = {"synthetic_train": train, **over.pop("data", {})}
    train_over = {"batch_size": 32, "threads": 1, "watch": False, **over.pop("train", {})}
    return tiny_config(base, data=data, train=train_over, **over)


def _flow(cfg: PipelineConfig) -> dict:
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    state = mnist_lineage_pipeline(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    return state.result().to_dict()


def _audit(db: Path, target: str, capsys, *more: str) -> tuple[int, str, str]:
    from mnist_pipeline.flows.cli import main

    capsys.readouterr()
    rc = main(["audit", target, "--lineage-db", str(db), *more])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_other_data_settings_later_do_not_make_an_earlier_model_look_tampered(prefect_server, wandb_offline,
                                                                             tmp_path, capsys):
    first = _flow(_config(tmp_path, train=200))
    second = _flow(_config(tmp_path, train=240))  # same data root, other settings: another raw folder
    assert first["artifacts"]["dataset"]["digest"] != second["artifacts"]["dataset"]["digest"]
    db = tmp_path / "lineage.db"
    for target in ("convnet:v0", "convnet:v1", "convnet:production"):
        rc, out, err = _audit(db, target, capsys)
        assert rc == 0 and "VERIFIED" in out and "raw-file: 4 ok" in out, err + out[-2000:]
    store = LineageStore(db)
    raws = [Path(r["stored"]) for d in store.artifacts("dataset") for r in d.metadata["raw_files"]]
    assert len({p.parent for p in raws}) == 2  # two content-addressed folders, each still holding its bytes
    # and a real change is still caught: a flipped byte in a raw file the first dataset was read from
    victim = raws[0]
    blob = bytearray(victim.read_bytes())
    blob[30] ^= 0xFF
    victim.write_bytes(bytes(blob))
    rc, _, err = _audit(db, "convnet:v0", capsys)
    assert rc == 3 and f"TAMPERED: {victim}: sha256" in err
    assert {r.status for r in store.runs()} == {"finished"}
    _store_state(db)


@pytest.mark.slow
def test_a_tampered_dataset_is_caught_before_a_skip_and_rebuilt_from_the_source(prefect_server, wandb_offline,
                                                                               tmp_path, capsys):
    cfg = _config(tmp_path)
    first = _flow(cfg)
    dataset = Path(first["artifacts"]["dataset"]["path"])
    train_pt = dataset / "train.pt"
    blob = bytearray(train_pt.read_bytes())
    blob[-200] ^= 0xFF  # one flipped byte in the stored dataset: the next unchanged run would skip on it
    train_pt.write_bytes(bytes(blob))
    assert _audit(tmp_path / "lineage.db", "convnet:production", capsys)[0] == 3  # the audit sees it, too

    again = _flow(cfg)  # unchanged data and config
    assert again["status"] == "skipped"  # ... skipped, but only after the dataset was verified and rebuilt
    assert again["artifacts"]["dataset"]["digest"] == first["artifacts"]["dataset"]["digest"]
    [aside] = dataset.parent.glob(f"{dataset.name}.corrupt-*")  # kept for inspection, beside the new copy
    assert aside.joinpath("train.pt").read_bytes() == bytes(blob)
    store = LineageStore(tmp_path / "lineage.db")
    repairs = [r for r in store.runs() if r.job_type == "prepare-data" and r.summary.get("repaired")]
    assert len(repairs) == 1 and repairs[0].status == "finished"
    [event] = repairs[0].summary["repaired"]
    assert event["path"] == str(dataset) and "train.pt" in event["problem"] and event["moved_aside_to"] == str(aside)
    rc, out, err = _audit(tmp_path / "lineage.db", "convnet:production", capsys)
    assert rc == 0 and "VERIFIED" in out, err
    _store_state(tmp_path / "lineage.db")

    # the store itself: emptied (0 bytes), it is not silently restarted, and the read-only audit leaves it so
    db = tmp_path / "lineage.db"
    db.write_bytes(b"")
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    rc, out, err = _audit(db, "convnet:production", capsys)
    assert rc == 6 and err.strip() == (f"mnist-pipeline audit: {db}: the lineage store is empty (0 bytes), so it "
                                       "records nothing; if it was truncated, restore it from a backup")
    assert db.stat().st_size == 0 and not Path(f"{db}-wal").exists()  # never written
    from mnist_pipeline.flows.cli import main

    rc = main(["run", "--source", "synthetic", "--root", str(tmp_path / "data"), "--artifacts-dir",
               str(tmp_path / "art"), "--lineage-db", str(db), "--wandb-mode", "offline"])
    err = capsys.readouterr().err
    assert rc == 6 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.fullmatch(rf"mnist-pipeline: the lineage store {db} is empty \(0 bytes\), but {tmp_path / 'art'} holds "
                        r"\d+ artifact folder\(s\) that an earlier store recorded \(e.g. .*\): restore lineage.db "
                        rf"from a backup; to start a new history deliberately, move {tmp_path / 'art'} aside \(or give "
                        r"another --artifacts-dir\)", err.strip()), err
    assert db.stat().st_size == 0
    # a damaged store: one line naming the file, its own exit code, for the run and the audit alike
    db.write_bytes(b"this is not an SQLite database, just some bytes " * 100)
    rc, _, err = _audit(db, "convnet:production", capsys)
    assert rc == 6 and err.strip() == (f"mnist-pipeline audit: {db}: not a readable lineage store (file is not a "
                                       "database)")
    rc = main(["run", "--source", "synthetic", "--root", str(tmp_path / "data"), "--artifacts-dir",
               str(tmp_path / "art"), "--lineage-db", str(db), "--wandb-mode", "offline"])
    err = capsys.readouterr().err
    assert rc == 6 and err.strip() == f"mnist-pipeline: {db}: not a readable lineage store (file is not a database)"


def test_prepare_data_gets_its_retries_and_a_prefect_time_limit_from_the_config(tmp_path):
    from mnist_pipeline.tasks.prepare_data import for_config, network_error_only

    cfg = _config(tmp_path, data={"source": "download", "timeout": 2, "retries": 4, "retry_delay": 0.5,
                                  "task_timeout": 90})
    task = for_config(cfg)
    assert (task.retries, task.retry_delay_seconds, task.timeout_seconds) == (4, 0.5, 90)
    assert task.retry_condition_fn is network_error_only


@pytest.mark.slow
@pytest.mark.parametrize("size", ["160k", "280k"])  # full before the store exists; full part-way through the run
def test_a_run_with_its_store_on_a_full_disk_ends_with_the_disk_named_and_leaves_no_store_behind(
        prefect_server, tmp_path, size):
    db = tmp_path / "store" / "lineage.db"
    with tmpfs(tmp_path / "store", size=size):
        argv = [a if a != str(tmp_path / "lineage.db") else str(db) for a in _argv(
            tmp_path, "--source", "synthetic", "--synthetic-train", "200", "--synthetic-test", "50", "--slice", "1",
            "--epochs", "1")]
        proc = subprocess.run(argv, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        line = _last_line(proc.stderr)
        assert line == f"mnist-pipeline: pipeline failed: StorageError: No space left on device while writing {db} " \
                       "(not retried: it would fail the same way)", line
        if db.exists():  # full part-way: what was recorded is whole, and no run is left 'running'
            assert db.stat().st_size > 0
            assert all(status != "running" for _, status, _ in _store_state(db))
        else:
            assert sorted(p.name for p in db.parent.iterdir()) == []  # no 0-byte store, no -wal/-shm
