"""The team (docs/team.md): one Prefect server (the session's), a process work pool, two workers in separate folders
that share nothing but URLs (each its own cwd, HOME, TMPDIR, PREFECT_HOME and artifact cache; the store's password
only in PGPASSWORD, S3's keys only in AWS_*), one lineage store in PostgreSQL and one artifacts location in S3
(real servers, `tests/servers.py`). Runs of one deployment land on both workers (one work queue each, a run sent
to a queue); an unchanged run on the other worker is skipped; two changed runs at once, one per worker, both
complete and the gate ends with exactly one production; audit, impact, reproduce and gc from a third folder with
an empty cache; no secret in any file of the three folders nor in any row of the store; PostgreSQL stopped while a
worker trains: the flow run fails at train in one line, and with the server back the next run completes; a worker
killed mid-training
(kill -9 of its flow run and of the worker): its run is failed by the next stage on the other worker once its lease
ran out, nothing it made is recorded, the next run completes. Where the test runs as root, each worker has a host
name of its own (a UTS namespace), so the library judges the other worker's runs by their lease, as across hosts.
W&B online on both workers (the W&B stand-in, `tests/wandb_standin`; its key only in each worker's WANDB_API_KEY),
as docs/team.md advises: from the third folder `sync` finds nothing to send, `sync --verify` finds W&B and the store
in agreement, `audit --online` verifies, and the W&B key is in no file either.
The S3 server stopped mid-upload is tested at the stage level in tests/test_s3_artifacts.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from prefect_wandb.store import LineageStore
from tests.helpers import wait_for
from tests.roundtrip import writes
from tests.servers import database_dump
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow  # a Prefect server, PostgreSQL, S3, two `prefect worker` processes

POOL = "team-process"
DEPLOYMENT = "team"
QUEUES = ("worker-a", "worker-b")
RUN_TIMEOUT_S = 240
# The workers' lease (prefect_wandb.records.LEASE_S, 120 s) shortened for this test by a sitecustomize on their
# PYTHONPATH (the library has no setting for it): a killed worker's run is taken for dead after this long.
LEASE_S = 10
SITECUSTOMIZE = """import os
import prefect_wandb.records as records
records.LEASE_S = float(os.environ["TEAM_TEST_LEASE_S"])
"""


def _own_hostname() -> bool:
    """Whether each worker can have a host name of its own (a UTS namespace: root and unshare), so that the
    library tells the workers apart as it would two hosts (a run of another host: judged by its lease)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "hostname", "team-probe"], capture_output=True).returncode == 0


def _config(lineage_db: str, artifacts: str, **train) -> dict:
    """The deployment's config: tiny synthetic data under a relative root (in the worker's working folder), one
    epoch, no wandb.watch, short ONNX timings, W&B online (the host and key: each worker's environment), the store's
    URL without its password, S3."""
    return {"data": {"source": "synthetic", "synthetic_train": 200, "synthetic_test": 50, "slice": 1, "root": "data"},
            "train": {"epochs": 1, "batch_size": 16, "threads": 1, "watch": False, **train},
            "onnx": {"latency_samples": 10, "throughput_batch": 16, "timing_seconds": 0.05},
            "evaluate": {"misclassified_table_rows": 4}, "wandb": {"mode": "online", "project": "mnist-lineage"},
            "artifacts_dir": artifacts, "lineage_db": lineage_db}


def _folder(base: Path) -> dict[str, Path]:
    dirs = {d: base / d for d in ("home", "tmp", "prefect-home", "cache", "cwd")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _worker_env(dirs: dict[str, Path], api_url: str, password: str, s3env: dict, site: Path, w) -> dict:
    """A worker's whole environment: what any host has (PATH, locale), and the team's URLs and secrets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "PREFECT_", "AWS_", "PG", "MNIST_PIPELINE_")) and k not in {"NETRC", "HOME",
                                                                                                       "TMPDIR"}}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), PREFECT_HOME=str(dirs["prefect-home"]),
               PREFECT_API_URL=api_url, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WANDB_ARTIFACTS_CACHE=str(dirs["cache"]),
               PGPASSWORD=password, WANDB_SILENT="true", PYTHONUNBUFFERED="1", PYTHONPATH=str(site),
               TEAM_TEST_LEASE_S=str(LEASE_S), WANDB_BASE_URL=w.url, WANDB_API_KEY=w.api_key, **s3env)
    return env


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def _kill_flow_runs(root: Path) -> None:
    """SIGKILL what the workers started and left running (a flow run's process: Prefect starts it in a session of
    its own, so stopping its worker leaves it), found by the worker's PREFECT_HOME in its environment."""
    marker = f"PREFECT_HOME={root}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker in (proc / "environ").read_bytes() and int(proc.name) != os.getpid():
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def team(prefect_server, postgres, s3, tmp_path_factory):
    """The pool, the deployment, two workers (their folders, their processes), the store's URLs, the bucket, the
    W&B stand-in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    root = tmp_path_factory.mktemp("team")
    url = postgres.new_database(f"team_{secrets.token_hex(4)}")
    bare = url.replace(f":{postgres.password}@", "@")
    assert postgres.password not in bare
    artifacts = s3.bucket(f"team-{secrets.token_hex(4)}") + "/team"
    api_url = PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
        for q in QUEUES:
            client.create_work_queue(name=q, work_pool_name=POOL)
    dep = mnist_lineage_pipeline.to_deployment(
        name=DEPLOYMENT, parameters={"config": _config(bare, artifacts)}, enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH)
    dep_id = dep.apply(work_pool_name=POOL)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    own_host = _own_hostname()
    workers, procs = {}, []
    standin = contextlib.ExitStack()
    try:
        w = standin.enter_context(Standin())
        for name in QUEUES:
            dirs = _folder(root / name)
            env = _worker_env(dirs, api_url, postgres.password, s3.env(), site, w)
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - the worker writes it until it is stopped
            host = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name] if own_host else []
            proc = subprocess.Popen(
                [*host, str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL,
                 "--work-queue", name, "--name", name, "--limit", "1", "--type", "process"],
                cwd=dirs["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            workers[name] = {"dirs": dirs, "proc": proc, "log": root / f"{name}.log", "base": root / name}
        yield {"root": root, "url": url, "bare": bare, "artifacts": artifacts, "dep_id": dep_id, "workers": workers,
               "password": postgres.password, "s3": s3, "own_host": own_host, "wandb": w}
    finally:
        for proc in procs:
            _stop(proc)
        _kill_flow_runs(root)
        standin.close()


def _run(team: dict, queue: str, **train):
    """A flow run of the deployment sent to one worker's queue (train settings changed by `train`), waited for."""
    from prefect.deployments import run_deployment

    params = {"config": _config(team["bare"], team["artifacts"], **train)}
    return run_deployment(f"mnist-lineage-pipeline/{DEPLOYMENT}", parameters=params, work_queue_name=queue,
                          timeout=RUN_TIMEOUT_S, poll_interval=1)


def _logs(team: dict) -> str:
    return "\n".join(f"--- {n}:\n" + w["log"].read_text(errors="replace")[-3000:] for n, w in team["workers"].items())


def _ran_on(team: dict, store: LineageStore, flow_run_id) -> set[str]:
    """Which workers ran the flow run's stages: the worker whose folder holds each stage's W&B folder (beside that
    worker's own artifact cache), and, where each worker has a host name of its own, the host the store recorded."""
    runs = store.runs(str(flow_run_id))
    assert runs, f"no stage of flow run {flow_run_id} in the store"
    by_folder = {name for name, w in team["workers"].items() for r in runs
                 if r.wandb_dir and Path(r.wandb_dir).is_relative_to(w["base"])}
    if team["own_host"]:
        assert {r.env["process"]["host"] for r in runs} == by_folder, [r.env["process"] for r in runs]
    return by_folder


def _productions(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT name, artifact_id FROM aliases WHERE alias = 'production'")))
    finally:
        engine.dispose()


@contextlib.contextmanager
def _operator(team: dict):
    """A third folder, another host's: its own cwd, HOME and empty artifact cache; the store's password in
    PGPASSWORD, S3's keys in AWS_*; `cli(*argv)` runs `mnist-pipeline` in this process and returns its stdout
    (exit 0 asserted)."""
    from mnist_pipeline.cli.main import main

    dirs = _folder(team["root"] / "operator")
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith(("WANDB_", "AWS_", "PG", "MNIST_PIPELINE_"))]:
            mp.delenv(k)
        for k, v in team["s3"].env().items():
            mp.setenv(k, v)
        mp.setenv("PGPASSWORD", team["password"])
        mp.setenv("HOME", str(dirs["home"]))
        mp.setenv("PREFECT_WANDB_ARTIFACTS_CACHE", str(dirs["cache"]))
        mp.setenv("WANDB_BASE_URL", team["wandb"].url)
        mp.setenv("WANDB_API_KEY", team["wandb"].api_key)
        mp.chdir(dirs["cwd"])

        def cli(*argv: str) -> str:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*argv, "--lineage-db", team["bare"]])
            assert code == 0, (argv, code, out.getvalue()[-3000:], err.getvalue()[-3000:])
            return out.getvalue()

        yield cli


def test_runs_land_on_both_workers_skip_an_unchanged_run_and_two_at_once_end_with_one_production(team):
    store = LineageStore(team["url"])
    a, b = QUEUES

    first = _run(team, a)
    assert first.state.is_completed(), (first.state, _logs(team))
    assert _ran_on(team, store, first.id) == {a}
    [promo] = store.promotions()
    assert promo.decision == "promoted" and promo.flow_run_id == str(first.id)
    production = store.alias("convnet", "production")
    assert production is not None and production.path.startswith(team["artifacts"] + "/model/convnet/")

    # the same run on the other worker: its cache is empty, it finds the dataset and the model in the store and S3
    second = _run(team, b)
    assert second.state.is_completed(), (second.state, _logs(team))
    assert second.state.message.startswith("training skipped:"), second.state.message
    assert _ran_on(team, store, second.id) == {b}
    assert {r.job_type for r in store.runs(str(second.id))} == {"prepare-data"}
    assert len(store.artifacts("model")) == 1

    # two changed runs at once, one per worker: both complete, the gate leaves exactly one production
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_run, team, q, learning_rate=lr) for q, lr in ((a, 0.01), (b, 0.02))]
        third, fourth = (f.result() for f in futures)
    for fr, q in ((third, a), (fourth, b)):
        assert fr.state.is_completed(), (fr.state, _logs(team))
        assert not (fr.state.message or "").startswith("training skipped"), fr.state.message
        assert _ran_on(team, store, fr.id) == {q}
    assert len(store.artifacts("model")) == 3
    decisions = {p.flow_run_id: p.decision for p in store.promotions()}
    assert set(decisions) == {str(first.id), str(third.id), str(fourth.id)}, decisions
    assert [name for name, _ in _productions(team["url"])] == ["convnet"]
    assert {r.status for r in store.runs()} == {"finished"}
    assert {r.wandb_mode for r in store.runs()} == {"online"} and store.wandb_gaps() == []
    team["scenario"] = "done"


def test_audit_impact_reproduce_and_gc_from_a_third_folder_and_no_secret_anywhere(team):
    if team.get("scenario") != "done":
        pytest.skip("the runs of the scenario did not complete")
    store = LineageStore(team["url"])
    production = store.alias("convnet", "production")
    assert production is not None
    [dataset] = store.artifacts("dataset")
    onnx = {a.label for run in store.consumers(production.artifact_id) for a in store.edges(run).produced
            if a.type == "onnx"}
    assert len(onnx) == 1, onnx
    with _operator(team) as cli:
        assert "VERIFIED" in cli("audit", "convnet:production")
        impacted = cli("impact", dataset.label)
        assert all(m.label in impacted for m in store.artifacts("model")), impacted
        assert "IDENTICAL" in cli("reproduce", *onnx)
        plan = json.loads(cli("gc", "--keep-last", "1", "--artifacts-dir", team["artifacts"], "--json"))
        # W&B: both workers recorded online, so from here `sync` has nothing to send (W&B is not written to), and
        # W&B's lineage is the store's
        sync_plan = json.loads(cli("sync", "--dry-run", "--json"))
        assert sync_plan["ok"] and not [a for r in sync_plan["runs"] for a in r["actions"]
                                        if a["status"] != "done"], sync_plan["runs"]
        before = writes(team["wandb"])
        cli("sync")
        assert writes(team["wandb"]) == before
        cli("sync", "--verify")
        assert "VERIFIED" in cli("audit", "convnet:production", "--online")
    assert plan["apply"] is False and plan["artifacts_dir"] == team["artifacts"]
    assert production.label in plan["kept"], plan["kept"]
    assert production.path not in {r["path"] for r in plan["removals"]}
    assert store.deletions() == {} and all(store.artifact(a.artifact_id) for a in store.artifacts())

    # the secrets: in no file of the three folders, no row of the store
    secrets_ = (team["password"], team["s3"].secret_key, team["wandb"].api_key)
    files = [p for p in team["root"].rglob("*") if p.is_file()]
    assert len(files) > 20
    assert [str(p) for p in files if any(s.encode() in p.read_bytes() for s in secrets_)] == []
    dump = database_dump(team["url"])
    assert "convnet" in dump and not [s for s in secrets_ if s in dump]


def test_postgresql_stopped_mid_training_fails_the_stage_in_one_line_and_the_next_run_completes(team, postgres):
    from prefect.deployments import run_deployment

    if team.get("scenario") != "done":
        pytest.skip("the runs of the scenario did not complete")
    store = LineageStore(team["url"])
    b = QUEUES[1]
    models = len(store.artifacts("model"))
    # a training of some seconds on worker b; the database server goes down while it runs
    params = {"config": _config(team["bare"], team["artifacts"], learning_rate=0.05, epochs=150)}
    hit = run_deployment(f"mnist-lineage-pipeline/{DEPLOYMENT}", parameters=params, work_queue_name=b, timeout=0)
    [train] = wait_for(lambda: [r for r in store.runs(str(hit.id)) if r.job_type == "train" and r.status == "running"],
                       RUN_TIMEOUT_S, "the training on worker b to start", interval=0.2)
    postgres.stop()
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            final = wait_for(lambda: (lambda r: r if r.state and r.state.is_final() else None)(
                client.read_flow_run(hit.id)), RUN_TIMEOUT_S, "the flow run to end with the store down", interval=1)
    finally:
        postgres.start()
    message = final.state.message or ""
    assert final.state.is_failed(), (final.state, _logs(team))
    assert message.startswith("failed at train: StoreError: ") and "\n" not in message, message
    assert re.search(r"cannot (open the lineage store|be reached)", message), message
    assert "lineage@" in message and team["password"] not in message, message  # the URL, without its password
    # the server is back: the next run (one epoch: a short one) completes on the same worker; the stranded run is
    # failed
    after = _run(team, b, learning_rate=0.05)
    assert after.state.is_completed(), (after.state, _logs(team))
    stranded = store.run(train.run_id)
    assert stranded.status == "failed" and stranded.error.startswith("process died: "), stranded
    assert not [x for x in store.artifacts() if x.producer_run_id == train.run_id]
    assert len(store.artifacts("model")) == models + 1
    assert [name for name, _ in _productions(team["url"])] == ["convnet"]


def test_a_worker_killed_mid_training_its_run_is_failed_once_its_lease_expires_and_the_next_run_completes(team):
    from prefect.deployments import run_deployment

    if team.get("scenario") != "done":
        pytest.skip("the runs of the scenario did not complete")
    store = LineageStore(team["url"])
    a, b = QUEUES
    before = {x.artifact_id: x.digest for x in store.artifacts()}
    # a long training on worker a (many epochs of the tiny data), killed with its worker as soon as it runs
    params = {"config": _config(team["bare"], team["artifacts"], learning_rate=0.03, epochs=500)}
    doomed = run_deployment(f"mnist-lineage-pipeline/{DEPLOYMENT}", parameters=params, work_queue_name=a, timeout=0)

    def training():
        return [r for r in store.runs(str(doomed.id)) if r.job_type == "train" and r.status == "running"]

    [train] = wait_for(training, RUN_TIMEOUT_S, "the training on worker a to start", interval=0.2)
    # the host goes down: the flow run's process (Prefect starts it in a session of its own, so it outlives a
    # killed worker) and the worker, both with SIGKILL
    os.kill(train.env["process"]["pid"], signal.SIGKILL)
    os.killpg(team["workers"][a]["proc"].pid, signal.SIGKILL)
    team["workers"][a]["proc"].wait(10)
    assert store.run(train.run_id).status == "running"  # nobody has looked yet

    # the next run, on worker b: its first stage finds the killed run dead (another host's: once its lease ran out)
    if team["own_host"]:
        lease = store.run(train.run_id).lease_expires_at  # its last renewal
        assert lease is not None
        time.sleep(max(0.0, _epoch(lease) + 1 - time.time()))
    after = _run(team, b, learning_rate=0.04)
    assert after.state.is_completed(), (after.state, _logs(team))
    assert _ran_on(team, store, after.id) == {b}
    killed = store.run(train.run_id)
    assert killed.status == "failed", killed
    assert killed.error.startswith(f"lease expired: pid {train.env['process']['pid']} on {a} " if team["own_host"]
                                   else "process died: "), killed.error
    # nothing lost: every version recorded before is still there, the killed run produced none; one production
    assert {x.artifact_id: x.digest for x in store.artifacts() if x.artifact_id in before} == before
    assert not [x for x in store.artifacts() if x.producer_run_id == train.run_id]
    assert {r.status for r in store.runs(str(after.id))} == {"finished"}
    assert "train" in {r.job_type for r in store.runs(str(after.id))}
    assert [name for name, _ in _productions(team["url"])] == ["convnet"]
    with _operator(team) as cli:
        assert "VERIFIED" in cli("audit", "convnet:production")


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()
