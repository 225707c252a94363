"""The prepare-data task (`tasks/prepare_data.py`): its retries and Prefect time limit come from the config, and a
config that does not match the data (more labels than classes, a slice larger than the data) stops the flow run at
prepare-data with nothing written. Flow runs created through the Prefect test server's API and executed as a worker
would, on tiny real IDX files, wandb offline.
"""

from __future__ import annotations

import pytest

from prefect_wandb.store import LineageStore
from tests.helpers import run_payload, synthetic_config, task_runs


def test_prepare_data_gets_its_retries_and_a_prefect_time_limit_from_the_config(tmp_path):
    from mnist_pipeline.tasks.prepare_data import for_config, network_error_only

    cfg = synthetic_config(tmp_path, data={"source": "download", "timeout": 2, "retries": 4, "retry_delay": 0.5,
                                           "task_timeout": 90})
    task = for_config(cfg)
    assert (task.retries, task.retry_delay_seconds, task.timeout_seconds) == (4, 0.5, 90)
    assert task.retry_condition_fn is network_error_only


@pytest.mark.parametrize("train_cfg, data_cfg, message", [
    # classes smaller than the labels in the data: the labels file is named
    ({"classes": 5}, {}, r"train-labels-idx1-ubyte: 60 label\(s\) outside 0\.\.4 \(max 9\)"),
    # a slice larger than the dataset
    ({}, {"slice": 500}, r"slice=500 is larger than the data: .*/src/MNIST/raw/train-images-idx3-ubyte holds only "
                         r"120 images \(data.slice\)"),
])
def test_config_that_does_not_match_the_data_stops_at_prepare_data_with_nothing_written(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, train_cfg, data_cfg, message):
    payload = {"data": {"source": "local", "local_dir": str(tiny_mnist), "root": str(tmp_path / "data"),
                        "slice": 1, **data_cfg},
               "train": {"epochs": 1, **train_cfg}, "wandb": {"mode": "offline"},
               "artifacts_dir": str(tmp_path / "art"), "lineage_db": str(tmp_path / "lineage.db")}
    fr, state = run_payload(payload)
    assert state.is_failed()
    with pytest.raises(Exception, match=message):
        state.result()
    assert [t.name.rsplit("-", 1)[0] for t in task_runs(fr.id)] == ["prepare-data"]
    store = LineageStore(tmp_path / "lineage.db")
    assert store.artifacts() == []
    [run] = store.runs()
    assert run.job_type == "prepare-data" and run.status == "failed"
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]

