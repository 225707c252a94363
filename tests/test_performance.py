"""Start-up costs (issue 13): what the flow imports before its first line, the Prefect server that the CLI starts
early and keeps for the next run, and the GPU check script exercised on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import write_mnist

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WANDB_API_KEY", "CI")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)})
    env.update(extra)
    return env


def test_published_md5s_are_torchvision_s():
    from torchvision.datasets import MNIST

    from mnist_pipeline import data

    assert dict(MNIST.resources) == data.PUBLISHED_MD5


def test_loading_the_flow_imports_no_torch_onnx_torchvision_or_wandb():
    """An unchanged (skipped) run never trains, exports, reads IDX files or opens a W&B run, so it must not pay for
    those imports (several seconds on two cores); the stages import them when they run."""
    code = ("import sys, flows.pipeline, flows.cli; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _lease_script(keep_s: float) -> str:
    return ("import json, sys; from mnist_pipeline.flows import prefect_server as ps; "
            f"lease = ps.acquire(keep_s={keep_s}); ok = lease.ready(); lease.release(); "
            "print(json.dumps({'ok': ok, 'url': lease.url, 'pid': lease.pid, 'started': lease.started_here}))")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_kept_server_is_reused_then_leaves_after_keep_s(tmp_path):
    env = _env(tmp_path)
    run = [sys.executable, "-c", _lease_script(keep_s=4)]
    first = json.loads(subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                                      check=True).stdout)
    assert first["ok"] and first["started"] and first["url"].startswith("http://127.0.0.1:")
    second = json.loads(subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                                       check=True).stdout)
    assert second == {**first, "started": False}  # the same server, no second start
    with urllib.request.urlopen(first["url"] + "/health", timeout=5) as r:
        assert r.status == 200
    assert _wait_gone(first["pid"], timeout=30), "the kept server outlived keep_s with no lease"
    state = list((tmp_path / "prefect-home" / "mnist-pipeline-server").glob("*/server.json"))
    assert state == []


@pytest.mark.slow
def test_temporary_mode_stops_the_server_at_the_end_and_a_dead_lease_holds_nothing(tmp_path):
    env = _env(tmp_path)
    # keep_s 0: stopped by the run's own release, before the process exits
    out = json.loads(subprocess.run([sys.executable, "-c", _lease_script(keep_s=0)], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=180, check=True).stdout)
    assert out["ok"] and not _alive(out["pid"])
    # a run killed while holding its lease: the server still goes once keep_s has passed
    code = ("import os, signal, json; from mnist_pipeline.flows import prefect_server as ps; lease = ps.acquire(keep_s=1); "
            "assert lease.ready(); print(json.dumps({'pid': lease.pid}), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=180)
    assert killed.returncode == -9
    pid = json.loads(killed.stdout)["pid"]
    assert _wait_gone(pid, timeout=30), "a dead run's lease kept the server alive"


@pytest.mark.slow
def test_runs_on_the_kept_server_send_no_heartbeats_unless_asked(tmp_path):
    """Prefect's heartbeat thread sleeps in 1 s steps and every flow's end joins it; on the private kept server
    (no UI, no automations to read them) runs send none. A user who sets the frequency gets it."""
    code = ("import json; from mnist_pipeline.flows import prefect_server as ps; "
            "from prefect.settings import get_current_settings; lease = ps.acquire(keep_s=0)\n"
            "with ps.use(lease) as url:\n"
            "    print(json.dumps({'url': url, 'heartbeat': get_current_settings().flows.heartbeat_frequency}))")
    plain = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path), capture_output=True,
                                      text=True, timeout=180, check=True).stdout)
    assert plain["url"].startswith("http://127.0.0.1:") and plain["heartbeat"] is None
    asked = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                      env=_env(tmp_path, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="45"), timeout=180,
                                      check=True).stdout)
    assert asked["heartbeat"] == 45


@pytest.mark.slow
def test_readme_command_without_a_server_completes_and_leaves_nothing_running(tmp_path):
    """The README's one command on a fresh machine (no PREFECT_API_URL, a new PREFECT_HOME), as CI runs it."""
    data = write_mnist(tmp_path / "mnist", n_train=200, n_test=60, gz=True)
    folder = tmp_path / "run"
    folder.mkdir()
    env = _env(tmp_path, CI="true")  # CI: the server is stopped at the end of the run
    cmd = [sys.executable, "-m", "mnist_pipeline.flows.cli", "run", "--source", "local", "--local-dir", str(data), "--epochs", "1",
           "--slice", "1"]
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["status"] == "completed"
    assert "Prefect server http://127.0.0.1:" in r.stderr and "started for this run" in r.stderr
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "prefect-home") not in ps  # no server of this PREFECT_HOME is left
    assert not [p for p in (tmp_path / "prefect-home").rglob("server.json")]
    # The quick exit lost nothing: every stage's offline W&B run was finished (its exit record is in the file).
    from mnist_pipeline.lineage.store import LineageStore
    from mnist_pipeline.lineage.wandb.run_file import offline_records, offline_run_file

    runs = LineageStore(folder / "mnist-runs" / "lineage.db").runs()
    assert sorted(r.job_type for r in runs) == sorted(["prepare-data", "train", "evaluate", "export-onnx",
                                                       "validate-onnx", "promote", "report"])
    for r in runs:
        assert r.status == "finished"
        kinds = {rec.WhichOneof("record_type") for rec in offline_records(offline_run_file(Path(r.wandb_dir)))}
        assert {"run", "exit"} <= kinds, (r.job_type, kinds)
        # the installed-package list, read once per process, still reaches every run's requirements file
        reqs = (Path(r.wandb_dir) / "files" / "requirements.txt").read_text()
        assert "torch==" in reqs and "prefect==" in reqs, r.job_type


def test_cli_exit_codes_survive_the_quick_exit(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mnist_pipeline.flows.cli", "run", "--epochs", "0"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mnist-pipeline: invalid configuration: train.epochs")
    ok = subprocess.run([sys.executable, "-m", "mnist_pipeline.flows.cli", "show-config", "--epochs", "3"], cwd=tmp_path,
                        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["train"]["epochs"] == 3  # stdout flushed before the exit


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    data = write_mnist(tmp_path / "mnist", n_train=600, n_test=200, gz=True)
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", str(data)], cwd=tmp_path,
                       env={**_env(tmp_path), "OUT": str(out), "PYTHON": sys.executable}, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()
    table = last[last.index(next(x for x in last if x.startswith("gpu_check on cpu"))):]
    assert any("README command, cold" in x for x in table)
    assert any(x.strip().startswith("CPU: overhead share <= 10%") for x in table)
    assert any("cold: unchanged CLI rerun <= 0.3x" in x for x in table)
    assert json.loads((out / "readme-run.json").read_text())["status"] == "completed"
    res = json.loads((out / "results-cpu.json").read_text())
    assert res["device"] == "cpu" and res["cold"]["rerun"]["status"] == "skipped"
    assert res["cold"]["first"]["status"] == "completed"  # the first run on a fresh machine, reported beside


def test_a_server_in_prefect_s_settings_is_used_and_none_is_started(tmp_path, monkeypatch):
    """In-process callers with Prefect's settings pointing at a server (prefect_test_harness does that without
    the environment variable) get no kept server: nothing is spawned."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mnist_pipeline.flows import prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert prefect_server.start_early() is None
    assert not (tmp_path / "home").exists()
