"""Start-up costs: what the flow imports before its first line, the README command on a machine with no Prefect
server (Prefect's own temporary one, gone at the end), and the GPU check script exercised on the CPU."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
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


@pytest.mark.slow
def test_loading_the_flow_imports_no_torch_onnx_torchvision_or_wandb():
    """An unchanged (skipped) run never trains, exports, reads IDX files or opens a W&B run, so it must not pay for
    those imports (several seconds on two cores); the stages import them when they run."""
    code = ("import sys, flows.pipeline, flows.cli; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_readme_command_without_a_server_completes_and_leaves_nothing_running(tmp_path):
    """The README's one command on a fresh machine (no PREFECT_API_URL, a new PREFECT_HOME): Prefect's own temporary
    server, stopped at the end of the run."""
    data = write_mnist(tmp_path / "mnist", n_train=200, n_test=60, gz=True)
    folder = tmp_path / "run"
    folder.mkdir()
    env = _env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # 2 shared cores: it can be slow
    cmd = [sys.executable, "-m", "mnist_pipeline.flows.cli", "run", "--source", "local", "--local-dir", str(data), "--epochs", "1",
           "--slice", "1"]
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["status"] == "completed"
    found = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", r.stderr)
    assert found, r.stderr[-3000:]
    assert not _port_open(int(found.group(1)))  # stopped with the run, not left behind
    # the CLI's last lines come after Prefect's own "Stopping temporary server" line
    assert _last_line(r.stderr).startswith("W&B: offline in "), r.stderr[-2000:]
    # The exit lost nothing: every stage's offline W&B run was finished (its exit record is in the file).
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


def test_cli_exit_codes_and_stdout_reach_the_shell(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mnist_pipeline.flows.cli", "run", "--epochs", "0"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mnist-pipeline: invalid configuration: train.epochs")
    ok = subprocess.run([sys.executable, "-m", "mnist_pipeline.flows.cli", "show-config", "--epochs", "3"], cwd=tmp_path,
                        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["train"]["epochs"] == 3  # stdout flushed before the exit


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_and_its_benchmark_writes_every_figure(tmp_path):
    """The GPU check script on the CPU: the README command, cold, then `benchmarks.bench --smoke` (every part runs:
    tutorial reference, flow, loop, onnx, rerun, the cold side-by-side) and the table. One test for both, as the
    benchmark's smoke run is most of the script's time; it checks that they work, not the figures."""
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
    for part in ("tutorial", "pipeline", "loop"):
        fig = res["figures"][part]
        assert fig["wall_s"] > 0 and fig["peak_rss_mib"] > 100 and 0 <= fig["test_accuracy"] <= 1
    assert res["rerun"]["status"] == "skipped"  # unchanged data and config: the cheap path
    assert res["onnx"]["ort_throughput"] > 0 and res["onnx"]["ort_p50_ms"] > 0
    assert set(res["ratios"]) >= {"pipeline_wall_over_tutorial_wall", "orchestration_overhead_share",
                                  "onnxruntime_throughput_over_torch", "rerun_wall_over_full_wall"}
    bench_log = (out / "bench.log").read_text()
    assert "target" in bench_log and "ratio pipeline_wall_over_tutorial_wall" in bench_log
