"""The lineage round trip, end to end, against the stateful W&B stand-in (tests/wandb_standin): the real flow on a
real Prefect server, the real wandb SDK online, and the real CLI (`run`, `sync`, `sync --verify`, `audit --online`),
called in this process (`tests.wandb_inprocess.cli_here`: every wandb call of the commands is handed the
stand-in's host explicitly). What W&B holds is read back through W&B's own public API (`wandb.Api()`), and compared
with the lineage store. The scenarios of sync, aliases and sweeps online are in test_sync_online,
test_alias_sync_online and test_sweep_online; the shared helpers in tests/roundtrip.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_wandb.refs import digest_alias
from prefect_wandb.store import LineageStore
from tests.helpers import write_mnist
from tests.roundtrip import (
    PROJECT,
    api,
    env_for,
    ref_of,
    run_args,
    standin_version,
    store_graph,
    versions_of,
    wandb_graph,
    writes,
)
from tests.wandb_inprocess import cli_here
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def online_flow(prefect_server, tmp_path_factory):
    """One flow run recorded online (`run --wandb-mode online`) into one stand-in, shared by the scenarios that
    read it."""
    base = tmp_path_factory.mktemp("online")
    src = base / "src"
    write_mnist(src)
    with Standin() as w:
        env = env_for(base, w)
        proc = cli_here(env, *run_args(base, src, "online"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        yield {"base": base, "src": src, "w": w, "env": env, "proc": proc, "db": base / "lineage.db"}


def test_an_online_run_puts_the_whole_lineage_graph_in_wandb(online_flow):
    w, store = online_flow["w"], LineageStore(online_flow["db"])
    runs = store.runs()
    assert runs and all(r.wandb_mode == "online" and r.status == "finished" for r in runs)
    assert store.wandb_gaps() == []
    a = api(w)
    # every version: its sha256 alias, `latest` on the newest, logged by the run that produced it
    graph, expected = wandb_graph(w, store), store_graph(store)
    for label, want in expected.items():
        assert graph[label]["logged_by"] == want["logged_by"], label
        assert graph[label]["used_by"] == want["used_by"], label
        assert graph[label]["version"] == "v" + label.rsplit(":v", 1)[1], label
    for name in {x.name for x in store.artifacts()}:
        newest = max((x for x in store.artifacts() if x.name == name), key=lambda x: x.version)
        assert "latest" in a.artifact(ref_of(newest)).aliases
    # every stage run's inputs, as W&B's run says
    for r in runs:
        used = sorted(f"{u.name}:v{u.version}" for u in store.edges(r.run_id).used)
        assert sorted(x.name for x in a.run(f"{PROJECT}/{r.run_id}").used_artifacts()) == used, r.job_type
        made = sorted(f"{u.name}:v{u.version}" for u in store.edges(r.run_id).produced)
        logged = a.run(f"{PROJECT}/{r.run_id}").logged_artifacts()  # and wandb's own tables of logged plots
        assert sorted(x.name for x in logged if x.type != "run_table") == made, r.job_type
    # candidate and production on the promoted model version
    [model] = store.artifacts("model")
    assert store.alias(model.name, "production").artifact_id == model.artifact_id
    assert {"candidate", "production"} <= set(a.artifact(ref_of(model)).aliases)
    # from the ONNX version back to the dataset, through W&B's own API
    [onnx] = store.artifacts("onnx")
    chain, art = [], a.artifact(ref_of(onnx))
    while art.type != "dataset":
        producer = art.logged_by()
        chain.append((art.type, producer.job_type))
        art = next(x for x in producer.used_artifacts() if x.type in ("model", "dataset"))
    chain.append((art.type, art.logged_by().job_type))
    assert chain == [("onnx", "export-onnx"), ("model", "train"), ("dataset", "prepare-data")]
    [ds] = store.artifacts("dataset")
    assert art.digest and digest_alias(ds.digest) in art.aliases

    # the CLI reads the same graph back: sync --verify and audit --online say VERIFIED
    env, db = online_flow["env"], str(online_flow["db"])
    v = cli_here(env, "sync", "--verify", "--lineage-db", db)
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"{len(store.artifacts())} artifact version(s) compared" in v.stdout and "OK:" in v.stdout
    onnx_file = next(Path(onnx.path).glob("*.onnx"))
    au = cli_here(env, "audit", "--online", "--json", "--lineage-db", db, str(onnx_file))
    assert au.returncode == 0, au.stdout[-3000:] + au.stderr
    report = json.loads(au.stdout)
    facts = report["wandb_online"]
    assert facts and all(f["found"] for f in facts.values())
    assert facts[onnx.label]["logged_by"] == onnx.producer_run_id
    assert digest_alias(onnx.digest) in facts[onnx.label]["aliases"]
    assert not (Path(env["HOME"]) / "wandb").exists()  # no wandb debug folder left where the commands ran




def test_an_offline_run_synced_is_the_same_graph_and_a_second_sync_sends_nothing(online_flow, tmp_path):
    write_mnist(tmp_path / "src")
    with Standin() as w:
        env = env_for(tmp_path, w)
        proc = cli_here(env, *run_args(tmp_path, tmp_path / "src", "offline"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert w.state()["runs"] == {}  # offline: nothing sent yet
        db = str(tmp_path / "lineage.db")
        s = cli_here(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr
        store = LineageStore(db)
        assert wandb_graph(w, store) == wandb_graph(online_flow["w"], LineageStore(online_flow["db"]))
        before, n_versions = writes(w), versions_of(w)
        again = cli_here(env, "sync", "--lineage-db", db)
        assert again.returncode == 0, again.stdout + again.stderr
        assert writes(w) == before  # a second sync sends nothing
        assert versions_of(w) == n_versions
        assert not (tmp_path / "home" / "wandb").exists()  # `wandb sync` left no debug folder where sync ran


def _other_bytes(w: Standin, store: LineageStore):
    [onnx] = store.artifacts("onnx")
    a = standin_version(w, onnx)
    path = next(p for p in a["files"] if p.endswith(".onnx"))
    w.model.data["manifests"][str(a["n"])]["contents"][path]["digest"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    a["files"][path]["digest"] = "AAAAAAAAAAAAAAAAAAAAAA=="
    return onnx, "content", f"{path}: W&B's md5 AAAAAAAAAAAAAAAAAAAAAA== differs", "differs from W&B's copy"


def _other_producer(w: Standin, store: LineageStore):
    [model] = store.artifacts("model")
    [prep] = [r for r in store.runs() if r.job_type == "prepare-data"]
    standin_version(w, model)["created_by"] = f"{w.entity}/{PROJECT}/{prep.run_id}"
    return (model, "producer", f"logged by run {prep.run_id} in W&B, by {model.producer_run_id} in the lineage store",
            f"W&B says it was logged by run {prep.run_id}")


def _missing_input(w: Standin, store: LineageStore):
    [ds] = store.artifacts("dataset")
    [train] = [r for r in store.runs() if r.job_type == "train"]
    a = standin_version(w, ds)
    key = f"{w.entity}/{PROJECT}/{train.run_id}"
    a["used_by"].remove(key)
    w.model.data["runs"][key]["inputs"].remove(a["id"])
    return (ds, "input", f"run {train.run_id} used it, but W&B does not list it",
            f"run {train.run_id} used {ds.label} in the lineage store; W&B does not list it")


@pytest.mark.parametrize("edit", [_other_bytes, _other_producer, _missing_input])
def test_wandb_disagreeing_with_the_store_fails_verify_and_the_online_audit(online_flow, edit):
    import copy

    w, env, db = online_flow["w"], online_flow["env"], str(online_flow["db"])
    store = LineageStore(db)
    [onnx] = store.artifacts("onnx")
    onnx_file = str(next(Path(onnx.path).glob("*.onnx")))
    with w.lock:
        saved = copy.deepcopy(w.model.data)
        art, kind, verify_says, audit_says = edit(w, store)
    try:
        v = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 3, v.stdout + v.stderr
        [line] = [x for x in v.stdout.splitlines() if x.strip().startswith(kind)]
        assert art.label in line and verify_says in line, v.stdout
        au = cli_here(env, "audit", "--online", "--json", "--lineage-db", db, onnx_file)
        assert au.returncode == 3, au.stdout[-3000:] + au.stderr
        failures = json.loads(au.stdout)["failures"]
        assert [f["artifact"] for f in failures if audit_says in f["detail"]] == [art.label], failures
    finally:
        with w.lock:
            w.model.data = saved
    assert cli_here(env, "sync", "--verify", "--lineage-db", db).returncode == 0  # W&B agrees again


