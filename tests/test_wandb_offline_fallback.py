"""W&B unreachable, with a planted fake API key: one `mnist-pipeline run --wandb-mode online` whose W&B host refuses
connections (a module fixture) falls back to offline runs and loses nothing, says where its records went, leaves
`sync --dry-run` planning exactly what W&B is missing, writes the key nowhere, and its
recorded artifacts still guard what uses them (a tampered model file is refused by export and validation; a
reference that is not the evaluation of its model is refused by validation). Real components throughout: the
Prefect test server, wandb (online against a dead loopback port, then offline), SQLite, `wandb sync --dry-run`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from prefect import flow

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.tasks import export_onnx, validate_onnx
from prefect_wandb.refs import ArtifactRef, DigestMismatch, wandb_ref
from prefect_wandb.store import LineageStore
from tests.helpers import (
    FAKE_KEY,
    JOB_TYPES,
    REPO,
    assert_store_is_sound,
    copy_sqlite,
    flow_run,
    flow_run_logs,
    free_port,
    run_command,
    run_env,
    run_flags,
    wandb_runs,
    write_mnist,
)


@pytest.fixture(scope="module")
def dead_wandb_run(prefect_server, tmp_path_factory):
    """One `mnist-pipeline run --wandb-mode online` whose W&B host refuses connections, with a fake key; `pristine`:
    a copy of its store as the run left it (SQLite's backup), before the tests below add their refused runs."""
    base = tmp_path_factory.mktemp("dead-wandb")
    write_mnist(base / "src")
    url = f"http://127.0.0.1:{free_port()}"
    env = run_env(base, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=url)
    t0 = time.monotonic()
    proc = subprocess.run(
        run_command("--source", "local", "--local-dir", str(base / "src"), "--slice", "1", "--epochs", "1",
                    "--batch-size", "16", "--log-every", "2", "--wandb-mode", "online", "--wandb-init-timeout", "4",
                    *run_flags(base)),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - t0
    pristine = tmp_path_factory.mktemp("dead-wandb-store") / "lineage.db"
    if (base / "lineage.db").exists():
        copy_sqlite(base / "lineage.db", pristine)
    return {"base": base, "proc": proc, "seconds": seconds, "store": LineageStore(base / "lineage.db"), "url": url,
            "pristine": pristine}


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
    assert_store_is_sound(store)

    # everything W&B was given is in the offline runs, ready for `wandb sync`: every artifact, every loss row
    on_disk = wandb_runs(base / "wandb")
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
                         env=run_env(base, WANDB_SILENT="false"), capture_output=True, text=True, timeout=60)
    assert "Would sync" in dry.stderr and "Skipped" not in dry.stderr, dry.stderr  # offline runs only, all
    assert all(f"run-{r.run_id}.wandb" in dry.stderr for r in runs), dry.stderr


def test_where_the_records_went_and_sync_plans_exactly_what_wandb_missed(dead_wandb_run, tmp_path, capsys):
    """W&B unreachable at init: every stage offline, the end-of-run line says so (the folder, no W&B URL) and names
    the sync command, and `sync --dry-run` (in this process: a dry run reaches no W&B) plans exactly one upload per
    offline run and one `use` per recorded input, the promotion, and nothing else. On a copy of the store as the run
    left it."""
    from mnist_pipeline.cli.main import main

    proc, url = dead_wandb_run["proc"], dead_wandb_run["url"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = tmp_path / "lineage.db"
    shutil.copyfile(dead_wandb_run["pristine"], db)
    store = LineageStore(db)
    runs = store.runs()
    assert len(runs) == 7 and all(r.status == "finished" for r in runs)  # six stages and the run report
    assert [r for r in runs if r.wandb_mode == "online"] == []

    # where the records went: one line, in the summary and on the console
    w = json.loads(proc.stdout[proc.stdout.index("{"):])["wandb"]
    assert w["needs_sync"] and f"mnist-pipeline sync --lineage-db {dead_wandb_run['base'] / 'lineage.db'}" in w["line"]
    assert w["line"] in proc.stderr
    assert "offline in" in w["line"] and ("online at " + url) not in w["line"]

    capsys.readouterr()
    assert main(["sync", "--dry-run", "--json", "--lineage-db", str(db)]) == 0
    plan = json.loads(capsys.readouterr().out)
    got = {(r["run_id"], a["action"], a.get("kind") or "", a["ref"]) for r in plan["runs"] for a in r["actions"]}
    expected = set()
    for r in runs:
        run_dir = next(a["ref"] for x in plan["runs"] if x["run_id"] == r.run_id for a in x["actions"]
                       if a["action"] == "upload")
        expected.add((r.run_id, "upload", "", run_dir))
        expected |= {(r.run_id, "use", "", wandb_ref(None, "mnist-lineage", u.name, u.digest))
                     for u in store.edges(r.run_id).used}
    assert got == expected
    assert len(plan["promotions"]) == 1 and plan["ok"]
    sent = [c[0] for c in plan["calls"] if c[0] in ("upload", "log_artifact", "declare_inputs", "add_aliases")]
    assert sent.count("log_artifact") == 0 and sent.count("upload") == len(runs)


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
    fr = flow_run(flow_run_id)
    assert fr.parameters["config"]["wandb"]["mode"] == "online"  # what was read back is the run's
    assert FAKE_KEY not in json.dumps(fr.parameters, default=str)
    logs = flow_run_logs(flow_run_id)
    assert any("W&B online init failed" in m for m in logs)
    assert not [m for m in logs if FAKE_KEY in m]


# ------------------------------------------------------------------------------------------------- tampered artifacts


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
            assert arts["model"].artifact_id in [u.artifact_id for u in store.edges(r.run_id).used]
            assert store.edges(r.run_id).produced == []
        assert not list((base / "art" / ".staging").glob("*/*"))
    finally:
        model_pt.write_bytes(original)
    assert_store_is_sound(store)


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

