"""The dataset the flow starts from (`flows/dataset.py`): a stored dataset whose files were changed is caught before
an unchanged run skips on it, moved aside and prepared again from the source; other data settings later make another
dataset without making an earlier model look tampered; an emptied or damaged lineage store is refused in one line,
never silently restarted. The whole flow in-process against the Prefect test server, wandb offline, the audit
through the CLI's `main`, real files flipped byte by byte.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_pipeline.config import PipelineConfig
from prefect_wandb.store import LineageStore
from tests.helpers import store_state, synthetic_config


def _flow(cfg: PipelineConfig) -> dict:
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline

    state = mnist_lineage_pipeline(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    return state.result().to_dict()


def _audit(db: Path, target: str, capsys, *more: str) -> tuple[int, str, str]:
    from mnist_pipeline.cli.main import main

    capsys.readouterr()
    rc = main(["audit", target, "--lineage-db", str(db), *more])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_other_data_settings_later_do_not_make_an_earlier_model_look_tampered(prefect_server, wandb_offline,
                                                                             tmp_path, capsys):
    first = _flow(synthetic_config(tmp_path, train=200))
    second = _flow(synthetic_config(tmp_path, train=240))  # same data root, other settings: another raw folder
    assert first["artifacts"]["dataset"]["digest"] != second["artifacts"]["dataset"]["digest"]
    db = tmp_path / "lineage.db"
    for target in ("convnet:v0", "convnet:v1", "convnet:production"):
        rc, out, err = _audit(db, target, capsys)
        assert rc == 0 and "VERIFIED" in out and "raw-file: 4 ok" in out, err + out[-2000:]
    store = LineageStore(db)
    raws = [Path(r["stored"]) for d in store.artifacts("dataset") for r in d.metadata["raw_files"]]
    assert len({p.parent for p in raws}) == 2  # two content-addressed folders, each still holding its bytes
    # and a real change is still caught: a flipped byte in a raw file the first dataset was read from
    victim = raws[0]
    blob = bytearray(victim.read_bytes())
    blob[30] ^= 0xFF
    victim.write_bytes(bytes(blob))
    rc, _, err = _audit(db, "convnet:v0", capsys)
    assert rc == 3 and f"TAMPERED: {victim}: sha256" in err
    assert {r.status for r in store.runs()} == {"finished"}
    store_state(db)


@pytest.mark.slow
def test_a_tampered_dataset_is_caught_before_a_skip_and_rebuilt_from_the_source(prefect_server, wandb_offline,
                                                                               tmp_path, capsys):
    cfg = synthetic_config(tmp_path)
    first = _flow(cfg)
    dataset = Path(first["artifacts"]["dataset"]["path"])
    train_pt = dataset / "train.pt"
    blob = bytearray(train_pt.read_bytes())
    blob[-200] ^= 0xFF  # one flipped byte in the stored dataset: the next unchanged run would skip on it
    train_pt.write_bytes(bytes(blob))
    assert _audit(tmp_path / "lineage.db", "convnet:production", capsys)[0] == 3  # the audit sees it, too

    again = _flow(cfg)  # unchanged data and config
    assert again["status"] == "skipped"  # ... skipped, but only after the dataset was verified and rebuilt
    assert again["artifacts"]["dataset"]["digest"] == first["artifacts"]["dataset"]["digest"]
    [aside] = dataset.parent.glob(f"{dataset.name}.corrupt-*")  # kept for inspection, beside the new copy
    assert aside.joinpath("train.pt").read_bytes() == bytes(blob)
    store = LineageStore(tmp_path / "lineage.db")
    repairs = [r for r in store.runs() if r.job_type == "prepare-data" and r.summary.get("repaired")]
    assert len(repairs) == 1 and repairs[0].status == "finished"
    [event] = repairs[0].summary["repaired"]
    assert event["path"] == str(dataset) and "train.pt" in event["problem"] and event["moved_aside_to"] == str(aside)
    rc, out, err = _audit(tmp_path / "lineage.db", "convnet:production", capsys)
    assert rc == 0 and "VERIFIED" in out, err
    store_state(tmp_path / "lineage.db")

    # the store itself: emptied (0 bytes), it is not silently restarted, and the read-only audit leaves it so
    db = tmp_path / "lineage.db"
    db.write_bytes(b"")
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    rc, out, err = _audit(db, "convnet:production", capsys)
    assert rc == 6 and err.strip() == (f"mnist-pipeline audit: {db}: the lineage store is empty (0 bytes), so it "
                                       "records nothing; if it was truncated, restore it from a backup")
    assert db.stat().st_size == 0 and not Path(f"{db}-wal").exists()  # never written
    from mnist_pipeline.cli.main import main

    rc = main(["run", "--source", "synthetic", "--root", str(tmp_path / "data"), "--artifacts-dir",
               str(tmp_path / "art"), "--lineage-db", str(db), "--wandb-mode", "offline"])
    err = capsys.readouterr().err
    assert rc == 6 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.fullmatch(rf"mnist-pipeline: the lineage store {db} is empty \(0 bytes\), but {tmp_path / 'art'} holds "
                        r"\d+ artifact folder\(s\) that an earlier store recorded \(e.g. .*\): restore lineage.db "
                        rf"from a backup; to start a new history deliberately, move {tmp_path / 'art'} aside \(or give "
                        r"another --artifacts-dir\)", err.strip()), err
    assert db.stat().st_size == 0
    # a damaged store: one line naming the file, its own exit code, for the run and the audit alike
    db.write_bytes(b"this is not an SQLite database, just some bytes " * 100)
    rc, _, err = _audit(db, "convnet:production", capsys)
    assert rc == 6 and err.strip() == (f"mnist-pipeline audit: {db}: not a readable lineage store (file is not a "
                                       "database)")
    rc = main(["run", "--source", "synthetic", "--root", str(tmp_path / "data"), "--artifacts-dir",
               str(tmp_path / "art"), "--lineage-db", str(db), "--wandb-mode", "offline"])
    err = capsys.readouterr().err
    assert rc == 6 and err.strip() == f"mnist-pipeline: {db}: not a readable lineage store (file is not a database)"



@pytest.mark.slow
def test_a_cancelled_run_s_hold_is_released_by_the_hook_its_runner_runs_in_another_process(prefect_server, tmp_path,
                                                                                          monkeypatch):
    """A run cancelled from the UI is killed by the runner (`mnist-pipeline serve`) or worker that started it, which
    then runs the flow's on_cancellation hooks itself, in its own process, with the flow run as the API holds it
    (prefect.runner's HookRunner: `hook(flow=, flow_run=, state=)`). The hook finds the run's store from its config
    (a partial payload over its deployment's defaults) and releases the run's hold on its dataset."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from mnist_pipeline.config import ALLOWED_ROOTS_ENV
    from mnist_pipeline.deployments.serve import MANUAL, build_deployments
    from mnist_pipeline.flows import dataset as flow_dataset
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
    from prefect_wandb import hold_artifact
    from prefect_wandb.holds import held
    from tests.helpers import tiny_config
    from tests.test_operations import Lineage

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    srv = tmp_path / "srv"
    served = tiny_config(srv, train={"watch": False}, wandb={"dir": str(srv / "wandb")})
    for dep in build_deployments(served, paused=True):
        dep.apply()
    lineage = Lineage(srv)  # the deployment's store, srv/lineage.db, with a dataset in it
    _, [data] = lineage.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{mnist_lineage_pipeline.name}/{MANUAL}")
        fr = client.create_flow_run_from_deployment(dep.id, parameters={"config": {"train": {"seed": 7}}})
        hold_artifact(lineage.store, str(fr.id), data.artifact_id)  # what the run's process did before it was killed
        assert str(fr.id) not in flow_dataset._HELD  # the runner's process never saw the run's own memory
        as_the_api_holds_it = client.read_flow_run(fr.id)
    assert held(lineage.store) == {data.artifact_id: [str(fr.id)]}
    for hook in mnist_lineage_pipeline.on_cancellation_hooks:
        hook(flow=mnist_lineage_pipeline, flow_run=as_the_api_holds_it, state=Cancelling())
    assert held(lineage.store) == {}


@pytest.mark.slow
def test_a_local_run_cancelled_through_the_api_mid_training_runs_its_cancellation_hook(prefect_server, wandb_offline,
                                                                                       tmp_path):
    """A flow run started in this process (as `mnist-pipeline run` starts one) and cancelled through the API while it
    trains: Prefect signals no process it did not start, so the run goes on to its end and stays Cancelling; its
    on_cancellation hook runs then, in this process, and ends the run's hold on its dataset."""
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Cancelling

    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
    from prefect_wandb.holds import held
    from tests.helpers import flow_run_logs, tiny_config

    cfg = tiny_config(tmp_path, data={"synthetic_train": 2000},
                      train={"epochs": 2, "batch_size": 32, "threads": 1, "watch": False, "checkpoint_every": 5})
    checkpoints, cancelled, held_then = tmp_path / "art" / ".checkpoints", [], []

    def cancel_mid_training():
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("train-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        store = LineageStore(cfg.lineage_db)
        [training] = [r for r in store.runs() if r.job_type == "train"]
        held_then.append(held(store))
        with get_client(sync_client=True) as client:
            cancelled.append(client.set_flow_run_state(training.flow_run_id, Cancelling(message="cancelled from the "
                                                                                                 "UI")))

    canceller = threading.Thread(target=cancel_mid_training, daemon=True)
    canceller.start()
    state = mnist_lineage_pipeline(config=cfg, return_state=True)
    canceller.join(10)
    assert cancelled and cancelled[0].state.name == "Cancelling"
    assert [len(h) for h in held_then] == [1]  # mid-training, the run held its dataset
    assert state.name == "Cancelling", state  # what Prefect does with a run it did not start: it ends as it was
    assert FlowRunContext.get() is None
    logs = flow_run_logs(state.state_details.flow_run_id, "Hook 'release_holds' finished")
    assert "Running hook 'release_holds' in response to entering state 'Cancelling'" in logs, logs
    assert held(LineageStore(cfg.lineage_db)) == {}
