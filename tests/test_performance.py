"""Start-up costs: what the flow imports before its first line, and the README command on a machine with no Prefect
server (Prefect's own temporary one, gone at the end). The benchmarks' smoke tests are in tests/test_bench.py."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
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

    from mnist_pipeline import idx

    assert dict(MNIST.resources) == idx.PUBLISHED_MD5


@pytest.mark.slow
def test_loading_the_flow_imports_no_torch_onnx_torchvision_or_wandb():
    """An unchanged (skipped) run never trains, exports, reads IDX files or opens a W&B run, so it must not pay for
    those imports (several seconds on two cores); the stages import them when they run."""
    code = ("import sys, flows.pipeline, mnist_pipeline.cli.main; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_what_run_does_while_its_server_starts_imports_the_stages_and_the_first_run_s_needs_without_a_word():
    """`prepare_first_run` (the CLI's work while its own Prefect server comes up): every stage module, wandb's
    public API (which the first W&B run of a process imports) and matplotlib's fonts, with no warning (a figure
    too small for its layout warns on the console)."""
    import warnings

    from mnist_pipeline.tasks import STAGE_MODULES, prepare_first_run

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_first_run()
    assert {*STAGE_MODULES, "wandb.apis.public", "matplotlib.backends.backend_agg"} <= set(sys.modules)


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_readme_command_without_a_server_completes_and_leaves_nothing_running(tmp_path):
    """The README's one command on a fresh machine (no PREFECT_API_URL, a new PREFECT_HOME): a Prefect server for
    the run (`prefect server start`, started as the run begins), stopped at the end of the run, which lost none of
    its Prefect logs on the way."""
    data = write_mnist(tmp_path / "mnist", gz=True)
    folder = tmp_path / "run"
    folder.mkdir()
    env = _env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # 2 shared cores: it can be slow
    # the README's command on tiny data; what is tested is the process and its server, so the run does the least
    # that still runs every stage: one epoch, no wandb.watch, short ONNX timings, a 4-row misclassified table
    cmd = [sys.executable, "-m", "mnist_pipeline.cli.main", "run", "--source", "local", "--local-dir", str(data), "--epochs", "1",
           "--slice", "1", "--no-watch", "--onnx-latency-samples", "10", "--onnx-throughput-batch", "16",
           "--onnx-timing-seconds", "0.02", "--evaluate-misclassified-table-rows", "4"]
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = json.loads(r.stdout)
    assert ran["status"] == "completed"
    found = re.search(r"a Prefect server for this run on http://127.0.0.1:(\d+)/api", r.stderr)
    assert found, r.stderr[-3000:]
    assert not _port_open(int(found.group(1)))  # stopped with the run, not left behind
    assert _last_line(r.stderr).startswith("W&B: offline in "), r.stderr[-2000:]
    assert "Error logging to API" not in r.stderr  # the server outlived Prefect's last logs: every one arrived
    con = sqlite3.connect(tmp_path / "prefect-home" / "prefect.db")
    try:
        [(state, logs, task_runs)] = con.execute(
            "SELECT state_type, (SELECT count(*) FROM log WHERE flow_run_id = f.id), "
            "(SELECT count(*) FROM task_run WHERE flow_run_id = f.id) FROM flow_run f").fetchall()
    finally:
        con.close()
    assert state == "COMPLETED" and task_runs >= 7, (state, task_runs)
    assert logs >= sum(1 for ln in r.stderr.splitlines() if " INFO prefect.flow_runs: " in ln
                       or " INFO prefect.task_runs: " in ln), logs
    # The exit lost nothing: every stage's offline W&B run was finished (its exit record is in the file).
    from prefect_wandb.store import LineageStore
    from prefect_wandb.wandb.run_file import offline_records, offline_run_file

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

    # The same command again, nothing changed: told from the lineage store, no Prefect server started for it
    again = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    skipped = json.loads(again.stdout)
    assert skipped["status"] == "skipped" and skipped["production"] == ran["artifacts"]["model"]["ref"]
    assert "a Prefect server for this run" not in again.stderr, again.stderr[-3000:]
    assert "without starting Prefect" in _last_line(again.stderr), again.stderr[-2000:]
    assert sorted(x.run_id for x in LineageStore(folder / "mnist-runs" / "lineage.db").runs()) == \
        sorted(x.run_id for x in runs)  # nothing recorded: no flow run, no stage


def test_cli_exit_codes_and_stdout_reach_the_shell(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", "run", "--epochs", "0"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mnist-pipeline: invalid configuration: train.epochs")
    ok = subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", "show-config", "--epochs", "3"], cwd=tmp_path,
                        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["train"]["epochs"] == 3  # stdout flushed before the exit
