"""What `mnist-pipeline run` checks before any work (`flows/preflight.py`): a folder it would write to that is not
writable (here wandb's, on a real read-only tmpfs) ends the command with exit 2 and one line naming it, before a
lineage store or a Prefect server is created.
"""

from __future__ import annotations

import subprocess

from tests.helpers import REPO, offline_run_env, run_argv, tmpfs


def test_an_unwritable_wandb_folder_fails_before_any_work_with_one_line(tmp_path):
    with tmpfs(tmp_path / "wandb-ro", read_only=True):
        env = offline_run_env(tmp_path, api=False)
        proc = subprocess.run(run_argv(tmp_path, "--source", "synthetic", "--wandb-dir", str(tmp_path / "wandb-ro")),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"mnist-pipeline: cannot run here: Read-only file system while preparing "
                                   f"wandb.dir {tmp_path / 'wandb-ro'}")
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "home" / ".prefect").exists()  # no work

