"""Deployments against a real Prefect server on a free loopback port (SQLite, temporary PREFECT_HOME):
`mnist-pipeline serve` registers both deployments, a manual run triggered through the API (what the UI's Run
button does) is picked up by the serving process and completes, and its lineage lands in the store."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.cli.local_server import local_prefect_server, stop_group
from mnist_pipeline.config import SCHEDULE_CRON
from prefect_wandb.store import LineageStore
from tests.helpers import flow_run_logs, seed_prefect_home, store_state, task_runs, tiny_config, wait_for

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real `prefect server start` and `serve` subprocesses


@pytest.fixture(scope="module")
def server(tmp_path_factory, prefect_db):
    home = seed_prefect_home(tmp_path_factory.mktemp("prefect-home"), prefect_db)
    with local_prefect_server(home=home) as url:
        yield url


@pytest.fixture
def client(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as c:
        yield c


def test_serve_registers_deployments_and_runs_a_manual_run(server, client, tiny_mnist, tmp_path):
    db, art = tmp_path / "lineage.db", tmp_path / "artifacts"
    env = {**os.environ, "PREFECT_API_URL": server, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "WANDB_SILENT": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # the Run button's flow run picked up within a second, not ten
    env.pop("WANDB_API_KEY", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the serve process writes it until it is stopped
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mnist-pipeline")), "serve", "--cron", "30 4 * * 2", "--source",
         "local", "--local-dir", str(tiny_mnist), "--slice", "1", "--epochs", "1", "--batch-size", "16",
         "--root", str(tmp_path / "data"), "--artifacts-dir", str(art), "--lineage-db", str(db),
         "--wandb-mode", "offline", "--onnx-latency-samples", "20", "--onnx-throughput-batch", "32"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deps = wait_for(lambda: {d.name: d for d in client.read_deployments()} if len(client.read_deployments()) >= 2
                        else None, 120, "both deployments", interval=1)
        assert set(deps) == {"scheduled-retraining", "manual"}

        # the schedule is visible through the API, and only on the scheduled deployment
        sched = deps["scheduled-retraining"].schedules
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in sched] == [("30 4 * * 2", "UTC", True)]
        assert deps["manual"].schedules == []

        # the UI form: typed fields with descriptions, defaults and bounds
        schema = deps["manual"].parameter_openapi_schema
        defs = schema["definitions"]
        epochs = defs["TrainConfig"]["properties"]["epochs"]
        assert (epochs["minimum"], epochs["maximum"], epochs["default"]) == (1, 1000, 5)
        assert "Passes over the training split" in epochs["description"]
        assert defs["TrainConfig"]["properties"]["learning_rate"]["exclusiveMinimum"] == 0
        assert set(defs["DataConfig"]["properties"]["source"]["enum"]) == {"download", "local", "synthetic"}
        assert deps["manual"].parameters["config"]["train"]["epochs"] == 1  # the served defaults

        # a payload the form would refuse is refused by the API too, before any run exists
        bad = {"config": {**deps["manual"].parameters["config"], "train": {"epochs": 0}}}
        with pytest.raises(Exception, match=r"Validation failed for field .config.train.epochs.*less than the minimum"):
            client.create_flow_run_from_deployment(deps["manual"].id, parameters=bad)

        # the Run button: a flow run from the manual deployment, picked up by the serving process
        run = client.create_flow_run_from_deployment(deps["manual"].id)
        final = wait_for(lambda: (lambda r: r if r.state and r.state.is_final() else None)(client.read_flow_run(run.id)),
                         240, "the manual flow run to finish", interval=1)
        assert final.state.is_completed(), (final.state, (tmp_path / "serve.log").read_text()[-3000:])
        store = LineageStore(db)
        jobs = {r.job_type for r in store.runs(str(run.id))}
        assert {"prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote"} <= jobs
        assert store.alias("convnet", "production") is not None
    finally:
        stop_group(proc, signal.SIGINT, timeout=30)
        log.close()


def test_prefect_yaml_deploys_both_deployments_to_a_work_pool(server, client):
    env = {**os.environ, "PREFECT_API_URL": server, "MNIST_PIPELINE_REPO": str(REPO)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run([prefect, "work-pool", "create", "mnist-process", "--type", "process"], env=env, check=True,
                   capture_output=True)
    r = subprocess.run([prefect, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    deps = {d.name: d for d in client.read_deployments()}
    assert deps["scheduled-retraining"].work_pool_name == deps["manual"].work_pool_name == "mnist-process"
    # deployments/prefect.yaml cannot import the default: it must repeat it exactly
    assert [s.schedule.cron for s in deps["scheduled-retraining"].schedules] == [SCHEDULE_CRON]
    assert deps["manual"].enforce_parameter_schema
    assert deps["manual"].parameters["config"]["train"]["learning_rate"] == 0.005


# ---------------------------------------------------------------------------- a deployment's run: merged and confined


def _deployment_run(name: str, payload: dict):
    """A flow run of deployment `name` created through the API with this `config` payload (as the UI's Run form
    or `run_deployment` would), executed here the way a worker does."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"mnist-lineage-pipeline/{name}")
        fr = client.create_flow_run_from_deployment(dep.id, parameters={"config": payload})
    return fr, run_flow(mnist_lineage_pipeline, flow_run=fr, return_type="state")


def test_a_deployment_run_merges_a_partial_config_and_is_confined_to_the_deployment_folders(
        prefect_server, wandb_offline, tmp_path, monkeypatch):
    from mnist_pipeline.config import ALLOWED_ROOTS_ENV, ConfigError
    from mnist_pipeline.deployments.serve import MANUAL, build_deployments

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    srv = tmp_path / "srv"
    served = tiny_config(srv, train={"batch_size": 32, "threads": 1, "watch": False}, wandb={"dir": str(srv / "wandb")})
    for dep in build_deployments(served, paused=True):
        dep.apply()

    # a partial payload: only the seed; everything else is the deployment's, not the code's defaults
    fr, state = _deployment_run(MANUAL, {"train": {"seed": 7}})
    assert state.is_completed(), state.message
    summary = state.result().to_dict()
    assert summary["config_sources"]["train.seed"] == "run parameters"
    assert summary["config_sources"]["data.source"] == "deployment defaults"
    assert summary["config_sources"]["artifacts_dir"] == "deployment defaults"
    store = LineageStore(srv / "lineage.db")
    [train] = [r for r in store.runs() if r.job_type == "train"]
    assert train.config["train"]["seed"] == 7 and train.config["train"]["epochs"] == 1
    assert train.config["data"]["source"] == "synthetic"  # not the code default 'download'
    logs = flow_run_logs(fr.id, "config of deployment")
    assert any("config of deployment 'manual': from the run parameters: train.seed=7; from the deployment "
               "defaults:" in m for m in logs), logs

    # a path outside the deployment's folders is refused before any task, naming the field
    elsewhere = tmp_path / "elsewhere"
    for payload, field in (({"artifacts_dir": str(elsewhere / "art")}, "artifacts_dir"),
                           ({"wandb": {"dir": str(elsewhere / "w"), "mode": "offline"}}, "wandb.dir"),
                           ({"data": {"source": "synthetic", "root": "/etc/mnist"}}, "data.root")):
        fr, state = _deployment_run(MANUAL, payload)
        assert state.is_failed()
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .* outside the allowed roots .* \(the folders "
                           r"deployment 'manual' was served with; "):
            state.result()
        assert task_runs(fr.id) == []
    assert not elsewhere.exists() and not Path("/etc/mnist").exists()
    assert {r.status for r in store.runs()} == {"finished"}  # the refused runs left no trace in the store
    store_state(srv / "lineage.db")

