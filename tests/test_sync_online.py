"""`mnist-pipeline sync` completing W&B after what it missed (`prefect_wandb/sync.py`), against the
stateful W&B stand-in: an upload that failed mid-way, a process killed between the store's commit and W&B; never a
version logged twice. The real flow in a process of its own (`sync` then in this one: `tests.wandb_inprocess`),
W&B read back through `wandb.Api()`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_wandb.refs import digest_alias, wandb_ref
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
from tests.wandb_inprocess import cli_here
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow


def test_an_upload_that_failed_mid_way_is_completed_by_sync_without_a_duplicate(prefect_server, tmp_path, capsys):
    """`mnist-pipeline run --wandb-mode auto` with a key for a W&B that refuses one commit mid-flow (the version is
    left pending there): exit 0, a complete store, the later stages offline, one line saying where the records went,
    `sync --dry-run` planning exactly what W&B is missing; `sync` completes it, never logging a version twice."""
    from mnist_pipeline.cli.main import main

    write_mnist(tmp_path / "src")
    with Standin() as w:
        w.fail("CommitArtifact", "graphql-error", nth=2)  # the second version the flow logs (the model) is not committed
        env = env_for(tmp_path, w)
        proc = cli(env, *run_args(tmp_path, tmp_path / "src", "auto"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert w.api_key not in proc.stderr + proc.stdout
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
        db = str(tmp_path / "lineage.db")
        store = LineageStore(db)
        assert store.wandb_gaps(), "the failed commit is recorded for sync"
        runs = store.runs()
        assert len(runs) == 7 and all(r.status == "finished" for r in runs)  # six stages and the run report
        assert {a.type for a in store.artifacts()} == {"dataset", "model", "metrics", "onnx", "validation", "report"}
        # the stages up to the failure online; after it the host is not tried again
        assert {r.job_type: r.wandb_mode for r in runs} == {
            "prepare-data": "online", "train": "online", "evaluate": "offline", "export-onnx": "offline",
            "validate-onnx": "offline", "promote": "offline", "report": "offline"}
        [model] = store.artifacts("model")
        pending = [(k, v["state"]) for k, c in w.state()["collections"].items() for v in c["versions"]
                   if v["state"] != "COMMITTED"]
        assert pending == [(f"{w.entity}/{PROJECT}/{model.name}", "PENDING")]
        failed = {g.call for g in store.wandb_gaps(model.producer_run_id) if not g.error.startswith("not sent")}
        assert failed and all(f"W&B {c} failed" in proc.stderr for c in failed)

        # where the records went: one line, in the summary and on the console
        line = summary["wandb"]["line"]
        assert summary["wandb"]["needs_sync"] and f"mnist-pipeline sync --lineage-db {db}" in line
        assert line in proc.stderr and "offline in" in line and ("online at " + w.url) in line

        # `sync --dry-run` (in this process: a dry run reaches no W&B) plans exactly the missing pieces: the refused
        # version, and per offline run its upload and one `use` per input
        capsys.readouterr()
        assert main(["sync", "--dry-run", "--json", "--lineage-db", db]) == 0
        plan = json.loads(capsys.readouterr().out)
        got = {(r["run_id"], a["action"], a.get("kind") or "", a["ref"]) for r in plan["runs"] for a in r["actions"]}
        expected = {(model.producer_run_id, "upload", "artifact", wandb_ref(None, PROJECT, model.name, model.digest))}
        for r in runs:
            if r.wandb_mode == "offline":
                run_dir = next(a["ref"] for x in plan["runs"] if x["run_id"] == r.run_id for a in x["actions"]
                               if a["action"] == "upload")
                expected.add((r.run_id, "upload", "", run_dir))
                expected |= {(r.run_id, "use", "", wandb_ref(None, PROJECT, u.name, u.digest))
                             for u in store.edges(r.run_id).used}
        assert got == expected
        assert len(plan["promotions"]) == 1 and plan["ok"]
        sent = [c[0] for c in plan["calls"] if c[0] in ("upload", "log_artifact", "declare_inputs", "add_aliases")]
        assert (sent.count("log_artifact"), sent.count("upload")) == (1, 5)

        failing_verify = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert failing_verify.returncode == 3, failing_verify.stdout + failing_verify.stderr
        s = cli_here(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr
        committed = {k: [x["version"] for x in c["versions"] if x["state"] == "COMMITTED"]
                     for k, c in w.state()["collections"].items() if c["kind"] != "portfolio"}
        for art in store.artifacts():  # one committed version per stored version: none logged twice
            assert committed[f"{w.entity}/{PROJECT}/{art.name}"].count(f"v{art.version}") == 1
        before = writes(w)
        assert cli_here(env, "sync", "--lineage-db", db).returncode == 0
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
    d = stage.staging("data-" + where)
    (d / "data.txt").write_text("hello " + where)
    stage.produce("data-" + where, "dataset", d, {})
""".replace("PROJECT", PROJECT)


def test_a_process_killed_between_the_store_and_wandb_is_completed_by_sync(tmp_path):
    """The store first, W&B second: kill -9 right after the store's commit, once before W&B is told anything
    (after-store) and once after W&B took the version (after-wandb), each stage's output a version of its own
    (`data-<where>`) in one store; the next `sync` completes W&B for both, and never logs a version twice."""
    wheres = ["after-store", "after-wandb"]
    with Standin() as w:
        env = env_for(tmp_path, w, PREFECT_API_URL="")
        for where in wheres:
            proc = subprocess.run([sys.executable, "-c", CRASH, where, str(tmp_path)], cwd=env["HOME"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 9, proc.stderr[-3000:]
        store = LineageStore(tmp_path / "lineage.db")
        runs, refs = store.runs(), {}
        assert [r.job_type for r in runs] == ["prepare-data", "prepare-data"]
        for where, run in zip(wheres, runs, strict=True):
            [art] = store.edges(run.run_id).produced
            assert art.name == f"data-{where}"
            assert run.status == "finished" and (Path(art.path) / "data.txt").is_file()  # the record of truth stands
            ref = f"{PROJECT}/{art.name}:{digest_alias(art.digest)}"
            assert [(g.action, g.ref, g.call) for g in store.wandb_gaps(run.run_id)] == [
                ("upload", ref, "unconfirmed")]
            committed = [v for k, c in w.state()["collections"].items() if k == f"{w.entity}/{PROJECT}/{art.name}"
                         for v in c["versions"] if v["state"] == "COMMITTED"]
            assert len(committed) == (0 if where == "after-store" else 1)
            refs[where] = (ref, run.run_id)
        s = cli_here(env, "sync", "--lineage-db", str(tmp_path / "lineage.db"))
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli_here(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))
        assert v.returncode == 0, v.stdout + v.stderr
        assert versions_of(w) == {f"data-{where}": ["v0"] for where in wheres}
        for ref, run_id in refs.values():
            assert api(w).artifact(ref).logged_by().id == run_id
        before = writes(w)
        assert cli_here(env, "sync", "--lineage-db", str(tmp_path / "lineage.db")).returncode == 0
        assert writes(w) == before
