"""The lineage round trip, end to end, against the stateful W&B stand-in (tests/wandb_standin): the real flow on a
real Prefect server, the real wandb SDK online, and the real CLI (`run`, `sync`, `sync --verify`, `audit --online`,
`rollback`), each in its own process (wandb's process-wide settings keep the first host a process saw). What W&B
holds is read back through W&B's own public API (`wandb.Api()`), and compared with the lineage store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.lineage.refs import digest_alias
from mnist_pipeline.lineage.store import LineageStore
from tests.helpers import write_mnist
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROJECT = "mnist-lineage"
FAST = ["--wandb-init-timeout", "20", "--wandb-http-timeout", "10", "--wandb-http-retries", "2",
        "--wandb-artifact-wait-timeout", "30", "--wandb-finish-timeout", "30"]


def env_for(base: Path, w: Standin, **extra: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_")) and k != "NETRC"}
    for d in ("home", "tmp", "wandb"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"), WANDB_DIR=str(base / "wandb"),
               WANDB_SILENT="true", PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), WANDB_BASE_URL=w.url, WANDB_API_KEY=w.api_key)
    env.update(extra)
    return env


def cli(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_pipeline.flows.cli", *args], cwd=env["HOME"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_args(base: Path, src: Path, mode: str, *extra: str) -> list[str]:
    return ["run", "--source", "local", "--local-dir", str(src), "--slice", "1", "--epochs", "1",
            "--batch-size", "16", "--root", str(base / "data"), "--artifacts-dir", str(base / "art"),
            "--lineage-db", str(base / "lineage.db"), "--onnx-latency-samples", "10", "--onnx-throughput-batch",
            "16", "--evaluate-misclassified-table-rows", "4", "--threads", "1", "--no-watch",
            "--wandb-mode", mode, *FAST, *extra]


def api(w: Standin):
    import wandb

    return wandb.Api(api_key=w.api_key, overrides={"base_url": w.url}, timeout=30)


def ref_of(art) -> str:
    return f"{PROJECT}/{art.name}:{digest_alias(art.digest)}"


def wandb_graph(w: Standin, store: LineageStore) -> dict:
    """What W&B holds for every version of the store, keyed by `name:vN` of the store, with run ids replaced by
    job types: {"version", "aliases" (sha256 alias as 'sha256'), "logged_by", "used_by"}."""
    a = api(w)
    jobs = {r.run_id: r.job_type for r in store.runs()}
    out = {}
    for art in store.artifacts():
        got = a.artifact(ref_of(art))
        assert digest_alias(art.digest) in got.aliases, (art.label, got.aliases)
        out[art.label] = {"version": got.version,
                          "aliases": sorted("sha256" if x.startswith("sha256-") else x for x in got.aliases),
                          "logged_by": jobs.get(got.logged_by().id, got.logged_by().id),
                          "used_by": sorted(jobs.get(r.id, r.id) for r in got.used_by())}
    return out


def store_graph(store: LineageStore) -> dict:
    jobs = {r.run_id: r.job_type for r in store.runs()}
    return {a.label: {"logged_by": jobs[a.producer_run_id],
                      "used_by": sorted(jobs[r] for r in store.consumers(a.artifact_id)
                                        if store.run(r).status == "finished")}
            for a in store.artifacts()}


@pytest.fixture(scope="module")
def online_flow(prefect_server, tmp_path_factory):
    """One flow run recorded online (`run --wandb-mode online`) into one stand-in, shared by the scenarios that
    read it."""
    base = tmp_path_factory.mktemp("online")
    src = base / "src"
    write_mnist(src)
    with Standin() as w:
        env = env_for(base, w)
        proc = cli(env, *run_args(base, src, "online"))
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
        used = sorted(f"{u.name}:v{u.version}" for u in store.edges(r.run_id)["used"])
        assert sorted(x.name for x in a.run(f"{PROJECT}/{r.run_id}").used_artifacts()) == used, r.job_type
        made = sorted(f"{u.name}:v{u.version}" for u in store.edges(r.run_id)["produced"])
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
    v = cli(env, "sync", "--verify", "--lineage-db", db)
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"{len(store.artifacts())} artifact version(s) compared" in v.stdout and "OK:" in v.stdout
    onnx_file = next(Path(onnx.path).glob("*.onnx"))
    au = cli(env, "audit", "--online", "--json", "--lineage-db", db, str(onnx_file))
    assert au.returncode == 0, au.stdout[-3000:] + au.stderr
    report = json.loads(au.stdout)
    facts = report["wandb_online"]
    assert facts and all(f["found"] for f in facts.values())
    assert facts[onnx.label]["logged_by"] == onnx.producer_run_id
    assert digest_alias(onnx.digest) in facts[onnx.label]["aliases"]
    assert not (Path(env["HOME"]) / "wandb").exists()  # no wandb debug folder left where the commands ran


WRITES = ("UpsertBucket", "CreateArtifact", "CreateArtifactManifest", "CreateArtifactFiles", "CommitArtifact",
          "UseArtifact", "AddAliases", "DeleteAliases", "UpdateArtifact", "LinkArtifact", "file_stream", "upload")


def writes(w: Standin) -> dict[str, int]:
    return {op: w.count(op) for op in WRITES if w.count(op)}


def versions_of(w: Standin) -> dict[str, list[str]]:
    """Every artifact collection of the stand-in and its versions, as W&B numbers them."""
    return {k.rsplit("/", 1)[1]: [v["version"] for v in c["versions"]]
            for k, c in w.state()["collections"].items() if c["kind"] != "portfolio"}


def test_an_offline_run_synced_is_the_same_graph_and_a_second_sync_sends_nothing(online_flow, tmp_path):
    write_mnist(tmp_path / "src")
    with Standin() as w:
        env = env_for(tmp_path, w)
        proc = cli(env, *run_args(tmp_path, tmp_path / "src", "offline"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert w.state()["runs"] == {}  # offline: nothing sent yet
        db = str(tmp_path / "lineage.db")
        s = cli(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        v = cli(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr
        store = LineageStore(db)
        assert wandb_graph(w, store) == wandb_graph(online_flow["w"], LineageStore(online_flow["db"]))
        before, n_versions = writes(w), versions_of(w)
        again = cli(env, "sync", "--lineage-db", db)
        assert again.returncode == 0, again.stdout + again.stderr
        assert writes(w) == before  # a second sync sends nothing
        assert versions_of(w) == n_versions
        assert not (tmp_path / "home" / "wandb").exists()  # `wandb sync` left no debug folder where sync ran


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
from mnist_pipeline.lineage import store as store_mod
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.wandb.stage_run import StageRun

where = sys.argv[1]
if where == "after-store":  # killed right after the store's commit, before W&B is told anything
    StageRun.log_artifacts = lambda self, arts, summary: os._exit(9)
else:  # killed after W&B took the version, before the store heard back
    real = store_mod.LineageStore.record_wandb_gaps
    store_mod.LineageStore.record_wandb_gaps = lambda self, rid, gaps, confirmed=(): (
        os._exit(9) if confirmed else real(self, rid, gaps, confirmed))
cfg = PipelineConfig.model_validate({"artifacts_dir": sys.argv[2] + "/art", "lineage_db": sys.argv[2] + "/lineage.db",
                                     "wandb": {"mode": "online", "dir": sys.argv[2] + "/wandb", "project": "PROJECT"}})
with open_stage(cfg, "prepare-data") as stage:
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


def registry(w: Standin) -> dict[str, list[str]]:
    """The stand-in's registry collections: per collection, the version digests with their aliases there."""
    state = w.state()
    out = {}
    for key, c in state["collections"].items():
        if c["kind"] == "portfolio":
            out[key.rsplit("/", 1)[1]] = sorted((v["digest"], tuple(sorted(v["aliases"]))) for v in c["versions"])
    return out


def test_promotion_and_rollback_move_production_in_wandb_and_sync_replays_a_failed_registry_link(
        prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    reg = ["--promotion-registry-path", "wandb-registry-model/mnist"]
    with Standin() as w:
        env = env_for(tmp_path, w)
        db = str(tmp_path / "lineage.db")
        first = cli(env, *run_args(tmp_path, tmp_path / "src", "online", "--learning-rate", "1e-6", *reg))
        assert first.returncode == 0, first.stderr[-4000:]
        store = LineageStore(db)
        [v0] = store.artifacts("model")
        a = api(w)
        assert "production" in a.artifact(ref_of(v0)).aliases
        # linked into the registry with its aliases, not only `latest`
        [(digest, aliases)] = registry(w)["mnist"]
        assert "production" in aliases and digest == a.artifact(ref_of(v0)).digest

        w.fail("LinkArtifact", "graphql-error")  # the next promotion's link fails; its aliases reach W&B
        second = cli(env, *run_args(tmp_path, tmp_path / "src", "online", "--learning-rate", "0.01", "--epochs",
                                    "4", *reg))
        assert second.returncode == 0, second.stderr[-4000:]
        v1 = next(m for m in store.artifacts("model") if m.version == 1)
        assert store.alias(v1.name, "production").artifact_id == v1.artifact_id
        a = api(w)
        assert "production" in a.artifact(ref_of(v1)).aliases  # moved off the old version
        assert "production" not in a.artifact(ref_of(v0)).aliases
        assert [g["call"] for g in store.wandb_gaps() if g["action"] == "aliases"] == ["registry link"]
        assert len(registry(w)["mnist"]) == 1  # the link did not happen

        s = cli(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        assert "linked into wandb-registry-model/mnist" in s.stdout
        linked = dict(registry(w)["mnist"])
        assert "production" in linked[a.artifact(ref_of(v1)).digest]
        assert "production" not in linked[a.artifact(ref_of(v0)).digest]
        before = writes(w)
        assert cli(env, "sync", "--lineage-db", db).returncode == 0 and writes(w) == before  # replayed once

        rb = cli(env, "rollback", "--wandb-mode", "online", "--lineage-db", db, "--reason", "round trip")
        assert rb.returncode == 0, rb.stdout + rb.stderr
        a = api(w)
        assert "production" in a.artifact(ref_of(v0)).aliases
        assert "production" not in a.artifact(ref_of(v1)).aliases
        v = cli(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr

        # W&B disagreeing: `production` on the other version there
        c = w.model.collection(w.entity, PROJECT, v0.name)
        with w.lock:
            c["aliases"]["production"] = c["members"][1]
        v = cli(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 3, v.stdout + v.stderr
        [line] = [x for x in v.stdout.splitlines() if x.strip().startswith("alias")]
        assert v0.label in line and "alias 'production' is on this version in the lineage store" in line
        onnx = next(o for o in store.artifacts("onnx")
                    if v0.artifact_id in [u.artifact_id for u in store.edges(o.producer_run_id)["used"]])
        au = cli(env, "audit", "--online", "--json", "--lineage-db", db, str(next(Path(onnx.path).glob("*.onnx"))))
        assert au.returncode == 3, au.stdout[-3000:] + au.stderr
        [failure] = json.loads(au.stdout)["failures"]
        assert failure["artifact"] == v0.label and "alias 'production' is on" in failure["detail"]


def standin_version(w: Standin, art) -> dict:
    """The stand-in's own record of a stored version (W&B numbers versions as the store does, scenario 1)."""
    c = w.model.collection(w.entity, PROJECT, art.name, "sequence") or w.model.collection(w.entity, PROJECT, art.name)
    return w.model.data["artifacts"][c["members"][art.version]]


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
        v = cli(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 3, v.stdout + v.stderr
        [line] = [x for x in v.stdout.splitlines() if x.strip().startswith(kind)]
        assert art.label in line and verify_says in line, v.stdout
        au = cli(env, "audit", "--online", "--json", "--lineage-db", db, onnx_file)
        assert au.returncode == 3, au.stdout[-3000:] + au.stderr
        failures = json.loads(au.stdout)["failures"]
        assert [f["artifact"] for f in failures if audit_says in f["detail"]] == [art.label], failures
    finally:
        with w.lock:
            w.model.data = saved
    assert cli(env, "sync", "--verify", "--lineage-db", db).returncode == 0  # W&B agrees again


def test_two_flows_online_at_once_log_each_version_once_and_aliases_end_where_the_store_says(prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    with Standin() as w:
        env = env_for(tmp_path, w)
        procs = [subprocess.Popen([sys.executable, "-m", "mnist_pipeline.flows.cli",
                                   *run_args(tmp_path, tmp_path / "src", "online", "--seed", str(seed))],
                                  cwd=env["HOME"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (1, 2)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
        store = LineageStore(tmp_path / "lineage.db")
        assert len(store.artifacts("model")) == 2 and len(store.artifacts("dataset")) == 1
        # on a loaded machine a stage of either flow may have missed its W&B init timeout and recorded offline
        # (W&B is an observer): `sync` sends what W&B missed, and must not log anything twice either
        s = cli(env, "sync", "--lineage-db", str(tmp_path / "lineage.db"))
        assert s.returncode == 0, s.stdout + s.stderr
        # every stored version is one W&B version, numbered as in the store; nothing logged twice
        names = {art.name for art in store.artifacts()}
        held = {n: vs for n, vs in versions_of(w).items() if n in names}
        assert held == {n: [f"v{a.version}" for a in store.artifacts() if a.name == n] for n in names}
        for n in names:  # and no two W&B versions of the same bytes
            c = w.model.collection(w.entity, PROJECT, n)
            digests = [w.model.data["artifacts"][aid]["digest"] for aid in c["members"]]
            assert len(digests) == len(set(digests)), n
        a = api(w)
        for alias in ("candidate", "production"):
            held = store.alias("convnet", alias)
            assert held is not None and alias in a.artifact(ref_of(held)).aliases, alias
        v = cli(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))
        assert v.returncode == 0, v.stdout + v.stderr


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
                    if prod.artifact_id in [u.artifact_id for u in store.edges(o.producer_run_id)["used"]])
        exporter = a.artifact(ref_of(onnx)).logged_by()
        model = next(x for x in exporter.used_artifacts() if x.type == "model")
        assert digest_alias(prod.digest) in model.aliases
        ds = next(x for x in model.logged_by().used_artifacts() if x.type == "dataset")
        assert ds.logged_by().job_type == "prepare-data"
        v = cli(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))
        assert v.returncode == 0, v.stdout + v.stderr
