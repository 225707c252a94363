"""A sweep online (`flows/sweep.py`) against the stateful W&B stand-in: every trial's run grouped as in the store,
every artifact and edge, the winner's chain from the ONNX file back to the dataset; a normal end with no Dask
chatter and nothing left behind. The real `mnist-pipeline sweep` in a process of its own (what its Dask workers print
reaches its stderr); `sync --verify` in this process (`tests.wandb_inprocess.cli_here`)."""

from __future__ import annotations

import re

import pytest

from prefect_wandb.refs import digest_alias
from prefect_wandb.store import LineageStore
from tests.helpers import write_mnist
from tests.roundtrip import (
    PROJECT,
    api,
    cli,
    env_for,
    ref_of,
    run_args,
    store_graph,
    wandb_graph,
)
from tests.wandb_inprocess import cli_here
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow


SWEEP = """
method: grid
metric: {name: test_accuracy, goal: maximize}
parameters:
  train.learning_rate: {values: [0.001, 0.01]}
name: tiny-grid
"""


def test_a_sweep_online_puts_every_trial_and_the_winners_chain_in_wandb(prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    with Standin() as w:
        env = env_for(tmp_path, w)  # TMPDIR: tmp_path / "tmp"
        args = run_args(tmp_path, tmp_path / "src", "online")
        proc = cli(env, "sweep", "--sweep", str(tmp_path / "sweep.yaml"), "--workers", "1", *args[1:], timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        # a normal end reads like `run`'s: no Dask chatter, no progress-bar frames, nothing left behind
        assert not re.search(r"\bdistributed\.(scheduler|nanny|worker|core|http)", proc.stderr), proc.stderr[-4000:]
        assert "\r" not in proc.stderr
        assert not list((tmp_path / "tmp").glob("dask-*")) and list((tmp_path / "art" / ".staging").iterdir()) == []
        store = LineageStore(tmp_path / "lineage.db")
        runs = store.runs()
        trains = [r for r in runs if r.job_type == "train"]
        assert len(trains) == 2 and all(r.wandb_mode == "online" and r.status == "finished" for r in runs)
        a = api(w)
        # the trial runs, grouped in W&B as in the store
        for r in runs:
            assert a.run(f"{PROJECT}/{r.run_id}").group == r.run_group, r.job_type
        assert len({r.run_group for r in trains}) == 1
        # every trial's artifacts and edges
        graph, expected = wandb_graph(w, store), store_graph(store)
        assert {k: {x: v[x] for x in ("logged_by", "used_by")} for k, v in graph.items()} == expected
        # the winner: production in W&B, and its chain from the ONNX back to the dataset
        prod = store.alias("convnet", "production")
        assert prod is not None and "production" in a.artifact(ref_of(prod)).aliases
        onnx = next(o for o in store.artifacts("onnx")
                    if prod.artifact_id in [u.artifact_id for u in store.edges(o.producer_run_id).used])
        exporter = a.artifact(ref_of(onnx)).logged_by()
        model = next(x for x in exporter.used_artifacts() if x.type == "model")
        assert digest_alias(prod.digest) in model.aliases
        ds = next(x for x in model.logged_by().used_artifacts() if x.type == "dataset")
        assert ds.logged_by().job_type == "prepare-data"
        v = cli_here(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))  # in this process
        assert v.returncode == 0, v.stdout + v.stderr
