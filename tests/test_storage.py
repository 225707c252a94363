"""Writing the pipeline's files (`prefect_wandb/storage.py`): a disk that fills up while a run writes its artifacts
is named in one line, the step is not retried (it would fail the same way), and no 0-byte, partial or staged file
is left behind. A real `mnist-pipeline run` against the Prefect test server, its artifacts on a small real tmpfs.
"""

from __future__ import annotations

import re
import subprocess

from tests.helpers import REPO, last_line, leftovers, offline_run_env, run_argv, store_state, tmpfs


def test_a_full_disk_is_named_in_one_line_not_retried_and_leaves_nothing_behind(prefect_server, tmp_path):
    with tmpfs(tmp_path / "art", size="256k"):
        proc = subprocess.run(run_argv(tmp_path, "--source", "synthetic", "--synthetic-train", "1000",
                                       "--synthetic-test", "100", "--slice", "1", "--epochs", "1"),
                              cwd=REPO, env=offline_run_env(tmp_path), capture_output=True, text=True, timeout=180)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        line = last_line(proc.stderr)
        assert re.fullmatch(rf"mnist-pipeline: pipeline failed: StorageError: No space left on device while writing "
                            rf"{tmp_path}/art/.staging/\w+/mnist/train.pt \(not retried: it would fail the same way\)",
                            line), line
        assert [p for p in (tmp_path / "art").rglob("*") if p.is_file()] == []  # no 0-byte or partial file
    runs = store_state(tmp_path / "lineage.db")
    assert [(j, s) for j, s, _ in runs] == [("prepare-data", "failed")]  # once: not retried
    assert "No space left on device while writing" in runs[0][2]
    assert leftovers(tmp_path) == []

