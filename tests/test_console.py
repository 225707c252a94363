"""How `mnist-pipeline run` and `sweep` end on the console (`mnist_pipeline/cli/console.py`): an expected failure is one last line
(its traceback kept in the flow run's logs in Prefect), an unexpected error keeps its traceback, and SIGTERM or
Ctrl-C ends a run or a sweep in seconds with one line, exit status 128 + the signal, and the temporary Prefect
server, Dask cluster and wandb processes gone. Real `mnist-pipeline run`/`sweep` processes, the Prefect test server
or Prefect's own temporary one, real signals, a real lineage store.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_wandb.store import LineageStore
from tests.helpers import (
    REPO,
    flow_run_logs,
    last_line,
    leftovers,
    offline_run_env,
    run_argv,
    store_state,
    wait_for,
    write_mnist,
)

# ---------------------------------------------------------------------------------------- expected failures: one line


@pytest.mark.slow
def test_an_expected_failure_ends_with_one_line_and_its_traceback_stays_in_the_prefect_logs(prefect_server, tmp_path):
    raw = write_mnist(tmp_path / "src")
    victim = raw / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    proc = subprocess.run(run_argv(tmp_path, "--source", "local", "--local-dir", str(tmp_path / "src"), "--slice",
                                   "1", "--epochs", "1"), cwd=REPO, env=offline_run_env(tmp_path), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last_line(proc.stderr) == (f"mnist-pipeline: pipeline failed: DataError: {victim}: truncated IDX file: "
                                      "93996 bytes, header promises 94096")
    assert store_state(tmp_path / "lineage.db") == [("prepare-data", "failed", last_line(proc.stderr).split(
        "pipeline failed: ")[1])]
    assert leftovers(tmp_path) == []
    # the full traceback is still in the flow run's logs in Prefect
    from prefect.client.orchestration import get_client

    [run] = LineageStore(tmp_path / "lineage.db").runs()
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.flow_run_id).state
    assert state.is_failed()
    logs = flow_run_logs(run.flow_run_id, "Traceback")
    assert any("Traceback" in m and "truncated IDX file" in m for m in logs), logs


def test_an_unexpected_error_keeps_its_traceback_on_the_console():
    from mnist_pipeline.cli import console
    from mnist_pipeline.idx import ChecksumError
    from prefect_wandb.storage import StorageError

    assert console.is_expected(ChecksumError("x")) and console.is_expected(StorageError(28, "/p"))
    assert console.is_expected(OSError(28, "No space left on device"))
    assert not console.is_expected(KeyError("x")) and not console.is_expected(OSError(5, "I/O error"))
    from mnist_pipeline.training import TrainingDiverged

    assert console.is_expected(TrainingDiverged("training diverged: the loss after 13 batches is nan"))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ChecksumError("x")
    assert console.is_expected(wrapped)


# ------------------------------------------------------------------------------------------------- SIGTERM and Ctrl-C


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _signal_mid_training(argv: list[str], env: dict, sig: int, *, marker: str, before=None) -> tuple[int, str, float, Any]:
    """Start `argv`, wait until its stderr says `marker` (training is under way), and a second more, call
    `before(pid)`, then send `sig` to the process only, as a scheduler or a shell's Ctrl-C would. Returns the exit
    code, the whole stderr, the seconds from the signal to the exit, and what `before` returned."""
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            err.append(line)
            if marker in line:
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
def test_a_signal_ends_the_run_in_seconds_with_one_line_and_everything_recorded(request, tmp_path, sig):
    """SIGTERM against the Prefect server a run starts for itself when none is configured (what a cron job gets):
    the server must go too, after it heard that the flow run ended. Ctrl-C against the configured (test) server, which must hear that the flow run
    ended."""
    temporary = sig == signal.SIGTERM
    prefect_db = request.getfixturevalue("prefect_db")  # the test server's, or a copy of its new database
    argv = run_argv(tmp_path, "--source", "synthetic", "--synthetic-train", "8000", "--synthetic-test", "100",
                    "--slice", "1", "--epochs", "5", "--batch-size", "32")
    env = offline_run_env(tmp_path, api=not temporary, prefect_db=prefect_db if temporary else None)
    code, stderr, seconds, _ = _signal_mid_training(argv, env, sig, marker="training on 8000 images")
    name = signal.Signals(sig).name
    assert code == 128 + sig, stderr[-3000:]
    assert seconds < 20, seconds
    assert "Traceback" not in stderr, stderr[-3000:]
    assert last_line(stderr).startswith(f"mnist-pipeline: terminated by {name}"), stderr[-2000:]
    runs = store_state(tmp_path / "lineage.db")
    assert ("prepare-data", "finished", None) in runs
    [train] = [r for r in runs if r[0] == "train"]
    assert train[1] == "failed" and train[2].endswith(f"terminated by {name}" + (" (Ctrl-C)" if sig == 2 else ""))
    if not temporary:  # the configured server keeps running, and holds the flow run as ended
        from prefect.client.orchestration import get_client

        [flow_run_id] = {r.flow_run_id for r in LineageStore(tmp_path / "lineage.db").runs()}
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        assert state.type.value in ("CRASHED", "CANCELLED"), state
        return
    # the server is gone (stopped as the process exits), and its database says the flow run crashed
    found = re.search(r"a Prefect server for this run on http://127.0.0.1:(\d+)/api", stderr)
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


@pytest.mark.slow
def test_the_prefect_server_a_run_started_goes_with_it_when_the_run_is_killed_minus_9(tmp_path, prefect_db):
    """kill -9 of `mnist-pipeline run` (no Prefect API configured: it started a Prefect server for itself, in a
    session of its own, which the test does not signal) once that server answers: no exit hook runs, and still the
    server ends with it (Linux: the parent-death signal), not left listening."""
    argv = run_argv(tmp_path, "--source", "synthetic", "--synthetic-train", "200", "--synthetic-test", "50",
                    "--slice", "1", "--epochs", "1")
    env = offline_run_env(tmp_path, api=False, prefect_db=prefect_db)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        found = None
        for line in proc.stderr:
            found = re.search(r"a Prefect server for this run on http://127.0.0.1:(\d+)/api", line)
            if found:
                break
        assert found, "the run never said where its Prefect server is"
        port = int(found.group(1))
        wait_for(lambda: _port_open(port), 120, "the run's Prefect server to answer", interval=0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    wait_for(lambda: not _port_open(port), 20, "the server to go with the run", interval=0.2)


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
def test_sigterm_ends_a_sweep_with_one_line_and_takes_its_server_and_cluster_along(tmp_path, prefect_db):
    """`mnist-pipeline sweep` with no configured server starts Prefect's temporary one and a local Dask cluster;
    SIGTERM in the middle of a trial must end it in seconds, exit 143, and leave none of its processes behind."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("method: grid\nmetric: {name: test_accuracy, goal: maximize}\n"
                     "parameters:\n  train.learning_rate: {values: [0.001, 0.01]}\n")
    argv = [sys.executable, "-m", "mnist_pipeline.cli.main", "sweep", "--sweep", str(sweep), "--source", "synthetic",
            "--synthetic-train", "8000", "--synthetic-test", "100", "--slice", "1", "--epochs", "5", "--workers", "1",
            "--root", str(tmp_path / "data"), "--artifacts-dir", str(tmp_path / "art"),
            "--lineage-db", str(tmp_path / "lineage.db")]
    env = offline_run_env(tmp_path, api=False, prefect_db=prefect_db)
    code, stderr, seconds, ours = _signal_mid_training(argv, env, signal.SIGTERM, marker="training on 8000 images",
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

