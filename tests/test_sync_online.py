"""`mnist-pipeline sync` completing W&B after what it missed (`prefect_wandb/sync.py`), against the
stateful W&B stand-in: an upload that failed mid-way, a process killed between the store's commit and W&B; never a
version logged twice. The real flow and CLI in processes of their own, W&B read back through `wandb.Api()`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prefect_wandb.refs import digest_alias
from prefect_wandb.store import LineageStore
from tests.helpers import write_mnist
from tests.roundtrip import (
    PROJECT,
    api,
    cli,
    env_for,
    run_args,
    versions_of,
    writes,
)
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow


def test_an_upload_that_failed_mid_way_is_completed_by_sync_without_a_duplicate(prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    with Standin() as w:
        w.fail("CommitArtifact", "graphql-error", nth=2)  # the second version the flow logs is not committed
        env = env_for(tmp_path, w)
        proc = cli(env, *run_args(tmp_path, tmp_path / "src", "online"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        db = str(tmp_path / "lineage.db")
        store = LineageStore(db)
        assert store.wandb_gaps(), "the failed commit is recorded for sync"
        pending = [v for c in w.state()["collections"].values() for v in c["versions"] if v["state"] != "COMMITTED"]
        assert len(pending) == 1
        failing_verify = cli(env, "sync", "--verify", "--lineage-db", db)
        assert failing_verify.returncode == 3, failing_verify.stdout + failing_verify.stderr
        s = cli(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr
        committed = {k: [x["version"] for x in c["versions"] if x["state"] == "COMMITTED"]
                     for k, c in w.state()["collections"].items() if c["kind"] != "portfolio"}
        for art in store.artifacts():  # one committed version per stored version: none logged twice
            assert committed[f"{w.entity}/{PROJECT}/{art.name}"].count(f"v{art.version}") == 1
        before = writes(w)
        assert cli(env, "sync", "--lineage-db", db).returncode == 0
        assert writes(w) == before


CRASH = """
import os, sys
from mnist_pipeline.config import PipelineConfig
from prefect_wandb import store as store_mod
from prefect_wandb.stage import open_stage
from prefect_wandb.wandb.stage_run import StageRun

where = sys.argv[1]
if where == "after-store":  # killed right after the store's commit, before W&B is told anything
    StageRun.log_artifacts = lambda self, arts, summary: os._exit(9)
else:  # killed after W&B took the version, before the store heard back
    real = store_mod.LineageStore.record_wandb_gaps
    store_mod.LineageStore.record_wandb_gaps = lambda self, rid, gaps, confirmed=(): (
        os._exit(9) if confirmed else real(self, rid, gaps, confirmed))
cfg = PipelineConfig.model_validate({"artifacts_dir": sys.argv[2] + "/art", "lineage_db": sys.argv[2] + "/lineage.db",
                                     "wandb": {"mode": "online", "dir": sys.argv[2] + "/wandb", "project": "PROJECT"}})
with open_stage(cfg.lineage(), "prepare-data", config=cfg) as stage:
    d = stage.staging("data")
    (d / "data.txt").write_text("hello " + where)
    stage.produce("data", "dataset", d, {})
""".replace("PROJECT", PROJECT)


@pytest.mark.parametrize("where", ["after-store", "after-wandb"])
def test_a_process_killed_between_the_store_and_wandb_is_completed_by_sync(tmp_path, where):
    """The store first, W&B second: kill -9 right after the store's commit; the next `sync` completes W&B, and
    never logs a version twice."""
    with Standin() as w:
        env = env_for(tmp_path, w, PREFECT_API_URL="")
        proc = subprocess.run([sys.executable, "-c", CRASH, where, str(tmp_path)], cwd=env["HOME"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 9, proc.stderr[-3000:]
        store = LineageStore(tmp_path / "lineage.db")
        [run] = store.runs()
        [art] = store.artifacts()
        assert run.status == "finished" and (Path(art.path) / "data.txt").is_file()  # the record of truth stands
        ref = f"{PROJECT}/data:{digest_alias(art.digest)}"
        assert [(g["action"], g["ref"], g["call"]) for g in store.wandb_gaps()] == [("upload", ref, "unconfirmed")]
        committed = [v for c in w.state()["collections"].values() for v in c["versions"] if v["state"] == "COMMITTED"]
        assert len(committed) == (0 if where == "after-store" else 1)
        s = cli(env, "sync", "--lineage-db", str(tmp_path / "lineage.db"))
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))
        assert v.returncode == 0, v.stdout + v.stderr
        assert versions_of(w) == {"data": ["v0"]}
        assert api(w).artifact(ref).logged_by().id == run.run_id
        before = writes(w)
        assert cli(env, "sync", "--lineage-db", str(tmp_path / "lineage.db")).returncode == 0
        assert writes(w) == before
