"""What `mnist-pipeline run` checks before any work (`flows/preflight.py`): a folder it would write to that is not
writable (here wandb's, on a real read-only tmpfs) ends the command with exit 2 and one line naming it, before a
lineage store or a Prefect server is created.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import REPO, offline_run_env, run_argv, tmpfs


@pytest.mark.slow  # a process of its own
def test_an_unwritable_wandb_folder_fails_before_any_work_with_one_line(tmp_path):
    with tmpfs(tmp_path / "wandb-ro", read_only=True):
        env = offline_run_env(tmp_path, api=False)
        proc = subprocess.run(run_argv(tmp_path, "--source", "synthetic", "--wandb-dir", str(tmp_path / "wandb-ro")),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"mnist-pipeline: cannot run here: Read-only file system while preparing "
                                   f"wandb.dir {tmp_path / 'wandb-ro'}")
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "home" / ".prefect").exists()  # no work



def test_the_config_sources_line_names_each_value_by_where_it_came_from():
    """A deployment run's log line: the run's own values, the deployment's defaults, and how many came from the
    code, an origin that gave nothing left out."""
    from mnist_pipeline.config import PipelineConfig
    from mnist_pipeline.flows.preflight import DEFAULT, DEPLOYMENT, RUN, describe_sources

    cfg = PipelineConfig.model_validate({"train": {"seed": 3, "epochs": 2}})
    both = describe_sources({"train.seed": RUN, "train.epochs": DEPLOYMENT, "train.classes": DEFAULT}, cfg)
    assert both == ("from the run parameters: train.seed=3; from the deployment defaults: train.epochs=2; "
                    "1 value(s) from the code defaults")
    run_only = describe_sources({"train.seed": RUN, "train.classes": DEFAULT, "train.kernels": DEFAULT}, cfg)
    assert run_only == "from the run parameters: train.seed=3; 2 value(s) from the code defaults"
