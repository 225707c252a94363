"""Reliability: bad input, lost connections, crashes and concurrent runs lose nothing.

Real components throughout: the Prefect test server (`prefect_server`), wandb (offline, or online against a
dead host), SQLite, and `mnist-pipeline run` in subprocesses that are killed with SIGKILL or run side by side.
What is already proven elsewhere is not repeated: invalid configs in tests/test_config.py, malformed data in
tests/test_data.py, weights_only loading in tests/test_model.py, in-process resume in tests/test_training.py,
concurrent store writers in tests/test_store.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from prefect import flow

from mnist_pipeline import training
from mnist_pipeline.config import ALLOWED_ROOTS_ENV, ConfigError, PipelineConfig
from mnist_pipeline.flows.cli import main
from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
from mnist_pipeline.lineage.refs import ArtifactRef, DigestMismatch, verify_files
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.store import FileRecord, LineageStore
from mnist_pipeline.lineage.wandb.run_file import offline_records
from mnist_pipeline.tasks import export_onnx, train, validate_onnx
from tests.helpers import free_port, interrupt_training, write_mnist

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "local-" + "5ec7e7f00dfacade0123456789abcdef0badc0de"  # planted: must be written nowhere
JOB_TYPES = {"prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote", "report"}


# ------------------------------------------------------------------------------------------------ helpers


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_server fixture sets PREFECT_API_URL"
    return url


def _env(base: Path, **extra: str) -> dict:
    """A clean environment for `mnist-pipeline run` against the test server; HOME and TMPDIR of its own,
    so that everything the run writes, wherever wandb or Prefect put it, lies under `base`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_"))}
    for d in ("home", "tmp", "wandb"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"), WANDB_DIR=str(base / "wandb"),
               WANDB_SILENT="true", PREFECT_API_URL=_api_url(), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_pipeline.flows.cli", "run", *args]


def _common(base: Path, *, seed: int = 0) -> list[str]:
    return ["--root", str(base / "data"), "--artifacts-dir", str(base / "art"), "--lineage-db",
            str(base / "lineage.db"), "--seed", str(seed), "--onnx-latency-samples", "20",
            "--onnx-throughput-batch", "32", "--evaluate-misclassified-table-rows", "8", "--threads", "1"]


def _wandb_runs(wandb_dir: Path) -> dict:
    """run id -> (job_type, group, [(artifact name, aliases)], history rows) of every offline run on disk."""
    runs = {}
    for f in wandb_dir.rglob("offline-run-*/run-*.wandb"):
        recs = list(offline_records(f))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        arts = [(r.artifact.name, sorted(r.artifact.aliases)) for r in recs
                if r.WhichOneof("record_type") == "artifact" and r.artifact.type != "run_table"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        runs[run.run_id] = (run.job_type, run.run_group, arts, history)
    return runs


def _assert_store_is_sound(store: LineageStore) -> None:
    """SQLite integrity holds and every recorded artifact's files are there, complete and unchanged."""
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()
    for a in store.artifacts():
        verify_files(Path(a.path), a.files)


def _flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def _run_payload(payload: dict):
    """A flow run created through the Prefect API with this parameter payload (as the UI or
    `run_deployment` would), then executed by the engine the way a worker does."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        fr = client.create_flow_run(mnist_lineage_pipeline, parameters={"config": payload})
    state = run_flow(mnist_lineage_pipeline, flow_run=fr, return_type="state")
    return fr, state


# ---------------------------------------------------------------------------------- bad input: API payloads


@pytest.mark.parametrize("section, key, value, field", [
    ("train", "epochs", 0, "train.epochs"),
    ("train", "epochs", -2, "train.epochs"),
    ("train", "batch_size", 0, "train.batch_size"),
    ("train", "learning_rate", 0.0, "train.learning_rate"),
    ("train", "learning_rate", -0.01, "train.learning_rate"),
    ("train", "kernels", [16], "train.kernels"),
    ("train", "kernels", [16, -4], "train.kernels"),
    ("train", "classes", 11, "train.classes"),
    ("data", "source", "s3", "data.source"),
    ("data", "slice", 0, "data.slice"),
    ("wandb", "mode", "sometimes", "wandb.mode"),
    ("train", "epoch", 2, "train.epoch"),  # a typo, not silently ignored
])
def test_a_bad_prefect_api_payload_fails_the_flow_run_before_any_task(prefect_server, tmp_path, section, key,
                                                                      value, field):
    payload = {section: {key: value}, "artifacts_dir": str(tmp_path / "art"),
               "lineage_db": str(tmp_path / "lineage.db")}
    fr, state = _run_payload(payload)
    assert state.is_failed()
    assert "Validation of flow parameters failed" in state.message
    with pytest.raises(Exception) as e:
        state.result()
    assert field.split(".")[-1] in str(e.value) and section in str(e.value)
    assert _flow_run(fr.id).state.is_failed()  # the server holds the failure, too
    assert _task_runs(fr.id) == []  # no task ran
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "art").exists()


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
    fr, state = _run_payload(payload)
    assert state.is_failed()
    with pytest.raises(Exception, match=message):
        state.result()
    assert [t.name.rsplit("-", 1)[0] for t in _task_runs(fr.id)] == ["prepare-data"]
    store = LineageStore(tmp_path / "lineage.db")
    assert store.artifacts() == []
    [run] = store.runs()
    assert run.job_type == "prepare-data" and run.status == "failed"
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------- bad input: paths and names


def test_paths_from_parameters_cannot_escape_the_allowed_roots(prefect_server, tiny_mnist, tmp_path, monkeypatch,
                                                                capsys):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    write_mnist(outside / "idx")
    inside = {"data": {"root": str(allowed / "data"), "source": "synthetic"},
              "artifacts_dir": str(allowed / "art"), "lineage_db": str(allowed / "lineage.db"),
              "wandb": {"dir": str(allowed / "wandb"), "mode": "offline"}}
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    PipelineConfig.model_validate(inside).resolved()  # all inside: accepted

    escapes = [
        ({"artifacts_dir": str(allowed / ".." / "outside" / "art")}, "artifacts_dir"),
        ({"lineage_db": "/tmp/lineage.db"}, "lineage_db"),
        ({"data": {"root": str(allowed / "link" / "data"), "source": "synthetic"}}, "data.root"),  # via a symlink
        ({"data": {"root": str(allowed / "data"), "source": "local", "local_dir": str(allowed / "link" / "idx")}},
         "data.local_dir"),
        ({"wandb": {"dir": str(allowed / ".." / "w"), "mode": "offline"}}, "wandb.dir"),
        ({"sign": {"private_key": str(outside / "signing.key")}}, "sign.private_key"),  # any PEM the worker reads
    ]
    for change, field in escapes:
        cfg = PipelineConfig.model_validate({**inside, **change})
        with pytest.raises(ConfigError, match=f"^{field}: .* outside the allowed roots"):
            cfg.resolved()

    # the CLI: exit 2, one line naming the field, nothing created
    code = main(["run", "--source", "synthetic", "--root", str(allowed / "data"), "--lineage-db",
                 str(allowed / "lineage.db"), "--artifacts-dir", str(allowed / ".." / "outside" / "art")])
    err = capsys.readouterr().err
    assert code == 2 and "invalid configuration: artifacts_dir:" in err and len(err.strip().splitlines()) == 1
    # the signing key, a config file and keygen's folder are held to the roots too
    from mnist_pipeline.provenance import keys

    key, _pub = keys.generate(outside / "keys")
    (outside / "cfg.yaml").write_text(f"lineage_db: {allowed / 'lineage.db'}\n")
    inside_flags = ["--source", "synthetic", "--root", str(allowed / "data"), "--lineage-db", str(allowed / "lineage.db"),
                    "--artifacts-dir", str(allowed / "art")]
    for argv, says in ((["run", *inside_flags, "--sign-key", str(key)], "mnist-pipeline: invalid configuration: sign.private_key: "),
                       (["run", *inside_flags, "--config", str(outside / "cfg.yaml")],
                        "mnist-pipeline: invalid configuration: --config: "),
                       (["keygen", "--out", str(outside / "new-keys")], "mnist-pipeline keygen: --out: ")):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(says) and "outside the allowed roots" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (outside / "new-keys").exists()
    # a Prefect API payload: the flow run fails before any task, nothing is written
    fr, state = _run_payload({**inside, "lineage_db": str(outside / "lineage.db")})
    assert state.is_failed()
    with pytest.raises(ConfigError, match="lineage_db: .* outside the allowed roots"):
        state.result()
    assert _task_runs(fr.id) == []
    fr, state = _run_payload({**inside, "sign": {"private_key": str(key)}})  # sign with the worker's other key
    assert state.is_failed() and _task_runs(fr.id) == []
    with pytest.raises(ConfigError, match="sign.private_key: .* outside the allowed roots"):
        state.result()
    assert not (outside / "lineage.db").exists() and not (outside / "art").exists()
    assert not (allowed / "lineage.db").exists() and not (allowed / "art").exists()


@pytest.mark.slow
def test_artifact_names_and_recorded_file_paths_cannot_leave_the_artifact_root(wandb_offline, tmp_path):
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    for bad in ("../evil", "a/b", "..", ""):
        with pytest.raises(ValueError, match="not a plain name"), open_stage(cfg, "export-onnx") as stage:
            stage.staging(bad)
    with pytest.raises(ValueError, match="not a plain name"), open_stage(cfg, "export-onnx") as stage:
        d = stage.staging("ok")
        (d / "f.txt").write_text("x")
        stage.produce("ok", "../../etc", d)
    # only a staged folder is ever moved into the store
    with pytest.raises(ValueError, match="outside"), open_stage(cfg, "export-onnx") as stage:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "f.txt").write_text("x")
        stage.produce("ok", "onnx", tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "f.txt").exists()
    # a store row whose relpath climbs out is refused, not followed
    (tmp_path / "secret.txt").write_text("s")
    with pytest.raises(DigestMismatch, match="escapes its artifact folder"):
        verify_files(tmp_path / "art", (FileRecord("../secret.txt", "0" * 64, 1),))
    store = LineageStore(cfg.lineage_db)
    assert store.artifacts() == [] and {r.status for r in store.runs()} == {"failed"}
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]


def test_credentials_in_a_mirror_url_are_refused_before_they_are_recorded(capsys, tmp_path):
    code = main(["run", "--mirrors", f"https://user:{FAKE_KEY}@mirror.example/mnist/", "--lineage-db",
                 str(tmp_path / "l.db"), "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "data.mirrors" in err and "credentials" in err and FAKE_KEY not in err
    assert not (tmp_path / "l.db").exists()


# ------------------------------------------------------------- W&B unreachable, with a planted fake API key


@pytest.fixture(scope="module")
def dead_wandb_run(prefect_server, tmp_path_factory):
    """One `mnist-pipeline run --wandb-mode online` whose W&B host refuses connections, with a fake key."""
    base = tmp_path_factory.mktemp("dead-wandb")
    write_mnist(base / "src")
    env = _env(base, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    proc = subprocess.run(
        _cli("--source", "local", "--local-dir", str(base / "src"), "--slice", "1", "--epochs", "1",
             "--batch-size", "16", "--log-every", "2", "--wandb-mode", "online", "--wandb-init-timeout", "4",
             *_common(base)),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return {"base": base, "proc": proc, "seconds": time.monotonic() - t0, "store": LineageStore(base / "lineage.db")}


def test_wandb_unreachable_falls_back_offline_and_loses_nothing(dead_wandb_run):
    proc, base, store = dead_wandb_run["proc"], dead_wandb_run["base"], dead_wandb_run["store"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    # one warning per stage, naming the reason; the init timeout is paid once, not once per stage
    warned = [ln for ln in proc.stderr.splitlines()
              if ("W&B online init failed" in ln or "W&B online init skipped" in ln) and "WARNING" in ln]
    assert {j for j in JOB_TYPES if any(f"recording {j} offline" in ln for ln in warned)} == JOB_TYPES
    assert sum("ago in this process" in ln for ln in warned) == len(JOB_TYPES) - 1, "\n".join(warned)
    assert dead_wandb_run["seconds"] < 120

    # the lineage store is complete
    runs = store.runs()
    assert sorted(r.job_type for r in runs) == sorted(JOB_TYPES)
    assert all(r.status == "finished" and r.wandb_mode == "offline" and r.wandb_url is None for r in runs)
    arts = {a.type: a for a in store.artifacts()}
    assert set(arts) == {"dataset", "model", "metrics", "onnx", "validation", "report"}
    assert {t: a.digest for t, a in arts.items()} == {t: v["digest"] for t, v in summary["artifacts"].items()}
    _assert_store_is_sound(store)

    # everything W&B was given is in the offline runs, ready for `wandb sync`: every artifact, every loss row
    on_disk = _wandb_runs(base / "wandb")
    assert set(on_disk) == {r.run_id for r in runs}
    for a in arts.values():
        assert (a.name, sorted(["latest", f"sha256-{a.digest[:16]}"])) in on_disk[a.producer_run_id][2]
    [train_run] = [r for r in runs if r.job_type == "train"]
    losses = [h for h in on_disk[train_run.run_id][3] if "loss" in h]
    assert len(losses) == 4  # 120 images / 16 = 8 batches, logged when (batches + 1) % 2 == 0
    assert [h["_step"] for h in losses] == [16, 48, 80, 112]  # step = examples seen after batches 1, 3, 5, 7
    # no half-made online run folder is left beside them for a `wandb sync --sync-all` to trip on
    assert list((base / "wandb" / "wandb").glob("offline-run-*")) and not list((base / "wandb" / "wandb").glob("run-*"))
    dry = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run"], cwd=base / "wandb",
                         env=_env(base, WANDB_SILENT="false"), capture_output=True, text=True, timeout=60)
    assert "Would sync" in dry.stderr and "Skipped" not in dry.stderr, dry.stderr  # offline runs only, all
    assert all(f"run-{r.run_id}.wandb" in dry.stderr for r in runs), dry.stderr


def _scan(path: Path, needle: bytes) -> tuple[int, list[Path]]:
    count, hits = 0, []
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            count += 1
            if needle in p.read_bytes():
                hits.append(p)
    return count, hits


def test_a_planted_api_key_is_written_nowhere(dead_wandb_run):
    proc, base = dead_wandb_run["proc"], dead_wandb_run["base"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    key = FAKE_KEY.encode()
    # every file the run wrote: lineage store (and its WAL), artifacts, wandb runs and logs, data, HOME
    # (Prefect's result storage, wandb's settings and caches, any netrc), TMPDIR
    scanned, hits = _scan(base, key)
    assert hits == []
    assert scanned > 40
    canary = base / "tmp" / "canary.txt"  # and the scan does find the key where it is written
    canary.write_bytes(b"x" + key + b"x")
    try:
        assert _scan(base, key)[1] == [canary]
    finally:
        canary.unlink()
    written = {p.name for p in base.rglob("*")}
    assert "lineage.db" in written and any(n.endswith(".wandb") for n in written) and "debug-internal.log" in written
    assert FAKE_KEY not in proc.stdout and FAKE_KEY not in proc.stderr
    # the store's own records, the Prefect flow-run parameters and the flow run's logs on the server
    store = dead_wandb_run["store"]
    flow_run_id = store.runs()[0].flow_run_id
    assert FAKE_KEY not in json.dumps([asdict(r) for r in store.runs()]) + json.dumps([a.metadata for a in store.artifacts()])
    fr = _flow_run(flow_run_id)
    assert fr.parameters["config"]["wandb"]["mode"] == "online"  # what was read back is the run's
    assert FAKE_KEY not in json.dumps(fr.parameters, default=str)
    logs = _flow_run_logs(flow_run_id)
    assert any("W&B online init failed" in m for m in logs)
    assert not [m for m in logs if FAKE_KEY in m]


# -------------------------------------------------------------------------------------- tampered artifacts


@flow(name="export-tampered")
def _export_only(cfg: PipelineConfig, model: ArtifactRef) -> ArtifactRef:
    return export_onnx(cfg, model)


@flow(name="validate-tampered")
def _validate_only(cfg: PipelineConfig, onnx_model: ArtifactRef, model: ArtifactRef,
                   dataset: ArtifactRef, metrics: ArtifactRef) -> ArtifactRef:
    return validate_onnx(cfg, onnx_model, model, dataset, metrics)


def test_a_tampered_model_file_is_refused_by_export_and_validation(dead_wandb_run, wandb_offline):
    store, base = dead_wandb_run["store"], dead_wandb_run["base"]
    assert dead_wandb_run["proc"].returncode == 0
    arts = {a.type: a for a in store.artifacts()}
    before = (len(store.artifacts()), len(store.runs()))
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(base / "art"), "lineage_db": str(base / "lineage.db"),
                                         "wandb": {"mode": "offline"},
                                         "onnx": {"latency_samples": 10, "throughput_batch": 8}}).resolved()
    model_pt = Path(arts["model"].path) / "model.pt"
    original = model_pt.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    model_pt.chmod(0o644)
    model_pt.write_bytes(bytes(tampered))
    try:
        for state in (_export_only(cfg, arts["model"].ref(), return_state=True),
                      _validate_only(cfg, arts["onnx"].ref(), arts["model"].ref(), arts["dataset"].ref(),
                                     arts["metrics"].ref(), return_state=True)):
            assert state.is_failed()
            with pytest.raises(DigestMismatch, match=f"{model_pt}: sha256 .* does not match the recorded"):
                state.result()
        assert len(store.artifacts()) == before[0]  # nothing new recorded
        refused = store.runs()[before[1]:]
        assert [r.job_type for r in refused] == ["export-onnx", "validate-onnx"]
        for r in refused:
            assert r.status == "failed" and "DigestMismatch" in r.error and str(model_pt) in r.error
            assert arts["model"].artifact_id in [u.artifact_id for u in store.edges(r.run_id)["used"]]
            assert store.edges(r.run_id)["produced"] == []
        assert not list((base / "art" / ".staging").glob("*/*"))
    finally:
        model_pt.write_bytes(original)
    _assert_store_is_sound(store)


def test_validation_refuses_a_reference_that_is_not_the_evaluation_of_its_model(dead_wandb_run, wandb_offline):
    """validate-onnx takes its torch logits from the metrics artifact: one that is not the evaluation of this model
    on this dataset is refused before anything is measured, and the refusal is on record."""
    store, base = dead_wandb_run["store"], dead_wandb_run["base"]
    arts = {a.type: a for a in store.artifacts()}
    before = (len(store.artifacts()), len(store.runs()))
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(base / "art"), "lineage_db": str(base / "lineage.db"),
                                         "wandb": {"mode": "offline"},
                                         "onnx": {"latency_samples": 10, "throughput_batch": 8}}).resolved()
    not_an_evaluation = arts["onnx"].ref()  # produced from the model, but no evaluation of it on the dataset
    state = _validate_only(cfg, arts["onnx"].ref(), arts["model"].ref(), arts["dataset"].ref(), not_an_evaluation,
                           return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"convnet-onnx:v0 is not the evaluation of convnet:v0 on mnist:v0"):
        state.result()
    assert len(store.artifacts()) == before[0]
    [refused] = store.runs()[before[1]:]
    assert refused.job_type == "validate-onnx" and refused.status == "failed"
    # the real evaluation is accepted (the check is not a blanket refusal)
    assert _validate_only(cfg, arts["onnx"].ref(), arts["model"].ref(), arts["dataset"].ref(), arts["metrics"].ref(),
                          return_state=True).is_completed()


# ----------------------------------------------------------------------- crash between writing and recording


class _StoreDown(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("where", ["finish_run", "fsync_tree"])
def test_a_crash_between_writing_and_recording_leaves_no_record_of_a_missing_or_partial_file(
        wandb_offline, tmp_path, monkeypatch, where):
    from mnist_pipeline.lineage import stage as stage_module

    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    store = LineageStore(cfg.lineage_db)
    calls = []

    def fails_once(real):
        def wrapper(*a, **kw):
            calls.append(where)
            if len(calls) == 1:
                raise _StoreDown(f"{where}: disk gone")
            return real(*a, **kw)
        return wrapper

    if where == "finish_run":
        monkeypatch.setattr(LineageStore, "finish_run", fails_once(LineageStore.finish_run))
    else:
        monkeypatch.setattr(stage_module, "fsync_tree", fails_once(stage_module.fsync_tree))

    def step():
        with open_stage(cfg, "export-onnx") as stage:
            out = stage.staging("convnet-onnx")
            (out / "model.onnx").write_bytes(b"onnx bytes" * 1000)
            (out / "export.json").write_text("{}")
            stage.produce("convnet-onnx", "onnx", out, {"opset": 18})
        return stage

    with pytest.raises(_StoreDown):
        step()
    [failed] = store.runs()
    assert failed.status == "failed" and f"{where}: disk gone" in failed.error
    assert store.artifacts() == []  # no record, so nothing recorded can be missing or partial
    assert not (cfg.artifacts_dir / ".staging").exists() or not any((cfg.artifacts_dir / ".staging").iterdir())
    if where == "fsync_tree":  # crashed before the rename: nothing reached its final place
        assert not (cfg.artifacts_dir / "onnx").exists()

    # the same step again succeeds, and what it records is whole (an orphan of the crash is verified, not trusted)
    stage = step()
    [art] = store.artifacts()
    assert art.producer_run_id == stage.run_id and art.version == 0
    verify_files(Path(art.path), art.files)
    assert [p.name for p in Path(art.path).parent.iterdir()] == [Path(art.path).name]
    assert [r.status for r in store.runs()] == ["failed", "finished"]
    _assert_store_is_sound(store)


def test_two_stages_storing_the_same_content_at_the_same_moment_overwrite_nothing(wandb_offline, tmp_path,
                                                                                   monkeypatch):
    """Both stages reach the rename having found the folder absent (a barrier holds them there): one rename
    wins, the other finds the folder whole and records the same version; neither fails, nothing is replaced."""
    import threading

    from mnist_pipeline.lineage import stage as stage_module

    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    barrier = threading.Barrier(2, timeout=60)

    class _OsWithSlowRename:  # the stage module's `os`, whose rename of a staged folder waits for the other stage
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if ".staging" in str(src):
                barrier.wait()
            return os.replace(src, dst)

    monkeypatch.setattr(stage_module, "os", _OsWithSlowRename())
    errors, stages = [], []

    def step():
        try:
            with open_stage(cfg, "prepare-data") as stage:
                out = stage.staging("mnist")
                (out / "train.pt").write_bytes(b"the same bytes" * 4096)
                stage.produce("mnist", "dataset", out, {})
            stages.append(stage)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=step) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = LineageStore(cfg.lineage_db)
    [art] = store.artifacts()
    assert sorted(store.producers(art.artifact_id)) == sorted(s.run_id for s in stages)
    assert [p.name for p in Path(art.path).parent.iterdir()] == [Path(art.path).name]
    _assert_store_is_sound(store)


# ----------------------------------------------------------------------------------- retries and kills


def test_a_prefect_retry_of_train_resumes_from_the_checkpoint(prefect_server, wandb_offline, tiny_mnist, tmp_path,
                                                             monkeypatch):
    """The train task fails mid-training (once); Prefect's retry resumes from the checkpoint, and says so."""
    real, attempts = training.train, []

    def crash_first_attempt(*a, **kw):
        attempts.append(1)
        if len(attempts) == 1:
            interrupt_training(monkeypatch, 11)  # InterruptedError after batch 11: checkpoints at 4, 8 (every 4)
        return real(*a, **kw)

    monkeypatch.setattr(training, "train", crash_first_attempt)
    cfg = PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 4, "log_every": 3},
        "wandb": {"mode": "offline"}, "artifacts_dir": str(tmp_path / "art"),
        "lineage_db": str(tmp_path / "lineage.db")}).resolved()

    from mnist_pipeline.tasks import prepare_data

    @flow(name="train-with-a-crash")
    def train_flow(cfg: PipelineConfig) -> ArtifactRef:
        return train(cfg, prepare_data(cfg))

    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    assert len(attempts) == 2
    store = LineageStore(cfg.lineage_db)
    trains = [r for r in store.runs() if r.job_type == "train"]
    assert [r.status for r in trains] == ["failed", "finished"]
    assert "InterruptedError" in trains[0].error
    [model] = store.artifacts("model")
    # 120 images / 16 = 8 batches an epoch; the last checkpoint before batch 11 was at batch 8 = end of epoch 0
    # where it resumed is the run's record (the model file is the same as an uninterrupted run's)
    assert trains[1].summary["resumed_from_checkpoint"] == {"epoch": 1, "batch": 0, "examples_seen": 120}
    assert model.metadata["examples_seen"] == 240 and model.metadata["batches"] == 16
    assert trains[1].summary["resumed"] is True
    assert not list((tmp_path / "art" / ".checkpoints").glob("*.pt"))  # done with once the model is recorded


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)  # what unpickling would do, if it were allowed to run code


def test_a_checkpoint_that_would_run_code_is_not_loaded_and_training_starts_over(tmp_path, caplog):
    from mnist_pipeline.data import Split
    from mnist_pipeline.model import ConvNet, ModelConfig
    from tests.helpers import tiny_digits

    marker, ckpt = tmp_path / "code-ran", tmp_path / "train-x.pt"
    torch.save({"model": _RunsCode(marker), "epoch": 1, "batch": 0, "examples_seen": 1, "batches": 1}, ckpt)
    # with a record that vouches for it (its digest), so that only weights_only stands in the way
    training.sidecar(ckpt).write_text(json.dumps({"sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
                                                  "lineage": None}))
    images, labels = tiny_digits(64, 0)
    settings = training.LoopSettings(epochs=1, batch_size=16, checkpoint_every=2, progress=False)
    with caplog.at_level("WARNING"):
        result = training.train(ConvNet(ModelConfig(kernels=(4, 8))), Split(torch.from_numpy(images),
                                torch.from_numpy(labels).long()), settings, torch.device("cpu"), checkpoint=ckpt)
    assert not marker.exists()  # no code ran
    assert result.resumed_from is None and result.examples_seen == 64  # started over, did not fail
    assert "ignoring unreadable checkpoint" in caplog.text
    assert torch.load(ckpt, weights_only=True)["batches"] == 4  # replaced by a real checkpoint


def test_a_killed_training_process_is_resumed_by_the_rerun(prefect_server, tmp_path):
    n_train, epochs, batch = 6000, 3, 50  # 360 batches, several seconds of training: time to kill it
    per_epoch = n_train // batch
    base = tmp_path
    argv = _cli("--source", "synthetic", "--synthetic-train", str(n_train), "--synthetic-test", "100", "--slice",
                "1", "--epochs", str(epochs), "--batch-size", str(batch), "--checkpoint-every", "7",
                "--log-every", "10", "--no-watch", "--wandb-mode", "offline", *_common(base))
    env = _env(base)
    ckpt_dir = base / "art" / ".checkpoints"
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(ckpt_dir.glob("train-*.pt")):  # wait for training to be under way ...
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        [ckpt] = ckpt_dir.glob("train-*.pt")
        seen = torch.load(ckpt, weights_only=True)["batches"]
        while torch.load(ckpt, weights_only=True)["batches"] < seen + 14:  # ... and two checkpoints further
            assert first.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # mid-epoch, no chance to clean up
        assert first.wait(30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # whatever it had started (wandb's service) goes with it
        first.stdout.close()

    last = torch.load(ckpt, weights_only=True)
    assert 0 < last["batches"] < epochs * per_epoch
    store = LineageStore(base / "lineage.db")
    killed = [r for r in store.runs() if r.job_type == "train"]
    assert [r.status for r in killed] == ["running"]  # it never got to say otherwise
    assert store.artifacts("model") == []
    # ... but the input it had declared is on record (edges are written when declared, not only at the end)
    assert [a.type for a in store.edges(killed[0].run_id)["used"]] == ["dataset"]
    _assert_store_is_sound(store)  # the store points at no missing or partial file

    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    [model] = store.artifacts("model")
    [resumer] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"]
    resumed = resumer.summary["resumed_from_checkpoint"]
    assert resumed == {"epoch": last["epoch"], "batch": last["batch"], "examples_seen": last["examples_seen"]}
    assert resumed["epoch"] * per_epoch + resumed["batch"] > 0
    # the examples seen in all are those of an uninterrupted run, not more (no batch trained twice in the count)
    assert model.metadata["examples_seen"] == epochs * n_train and model.metadata["batches"] == epochs * per_epoch
    trains = {r.run_id: r for r in store.runs() if r.job_type == "train"}
    dead = trains[killed[0].run_id]
    assert dead.status == "failed" and dead.error.startswith("process died")
    assert [r.status for r in trains.values()].count("finished") == 1
    assert all(r.status in ("finished", "failed") for r in store.runs())
    assert len(store.artifacts("dataset")) == 1  # the rerun used the same dataset, so the checkpoint applied
    assert not list(ckpt_dir.glob("train-*.pt"))
    _assert_store_is_sound(store)


# -------------------------------------------------------------------------------------- concurrent runs


def test_two_flow_runs_at_once_share_one_store_without_mixing(prefect_server, tmp_path):
    write_mnist(tmp_path / "src", gz=True)
    procs = {}
    for seed in (1, 2):
        argv = _cli("--source", "local", "--local-dir", str(tmp_path / "src"), "--slice", "1", "--epochs", "1",
                    "--batch-size", "16", "--log-every", "2", "--wandb-mode", "offline", *_common(tmp_path, seed=seed))
        procs[seed] = subprocess.Popen(argv, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    outs = {seed: p.communicate(timeout=300) for seed, p in procs.items()}
    for seed, p in procs.items():
        assert p.returncode == 0, outs[seed][1][-3000:]

    store = LineageStore(tmp_path / "lineage.db")
    _assert_store_is_sound(store)  # integrity ok, every artifact's files verify: nothing overwritten
    runs = store.runs()
    assert all(r.status == "finished" for r in runs)
    by_flow: dict[str, list[dict]] = {}
    for r in runs:
        by_flow.setdefault(r.flow_run_id, []).append(r)
    assert len(by_flow) == 2
    for flow_runs in by_flow.values():
        jobs = sorted(r.job_type for r in flow_runs)
        assert jobs in (sorted(JOB_TYPES), sorted(JOB_TYPES - {"prepare-data"}))  # prepare-data may be cached
        assert {r.run_group for r in flow_runs} == {f"flow-{flow_runs[0].flow_run_id}"}
        assert {r.config["train"]["seed"] for r in flow_runs} in ({1}, {2})
    assert len(runs) >= 9

    models = store.artifacts("model")
    assert sorted(m.version for m in models) == [0, 1] and len({m.digest for m in models}) == 2
    assert {m.metadata["fingerprint"]["seed"] for m in models} == {1, 2}
    assert len(store.artifacts("dataset")) == 1  # same data, one version, even if both prepared it
    for kind in ("metrics", "onnx", "validation"):
        assert len(store.artifacts(kind)) == 2
    # each W&B run holds only its own flow run's records and artifacts
    on_disk = _wandb_runs(tmp_path / "wandb")
    assert set(on_disk) == {r.run_id for r in runs}
    for r in runs:
        job, group, logged, history = on_disk[r.run_id]
        assert (job, group) == (r.job_type, r.run_group)
        produced = store.edges(r.run_id)["produced"]
        assert sorted(logged) == sorted((a.name, sorted(["latest", f"sha256-{a.digest[:16]}"])) for a in produced)
        keys = {k for row in history for k in row}
        assert ("loss" in keys) == (job == "train") and ("test_accuracy" in keys) == (job == "evaluate")
        if job == "train":  # its own 8 batches' loss rows, not the other training's
            assert [row["_step"] for row in history if "loss" in row] == [16, 48, 80, 112]
    # the promotion gate saw both models, one after the other: one production model
    assert len(store.promotions()) == 2 and store.alias("convnet", "production").type == "model"
    for m in models:  # and each model's inputs and consumers stay within its own flow run
        [producer] = [r for r in runs if r.run_id == m.producer_run_id]
        for consumer in store.consumers(m.artifact_id):
            assert store.run(consumer).flow_run_id == producer.flow_run_id
