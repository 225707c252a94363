"""W&B is an observer: a stage completes whatever W&B does, the store keeps everything, `sync` completes W&B.

Faults are injected at the network: the real wandb SDK talks to the loopback W&B stand-in (`tests/wandb_standin`),
set to let `wandb.init` get online and then fail every later call as W&B does (HTTP 401/429/500, a GraphQL error, no
answer at all), or to refuse from the first request; or nothing listens / a host never answers. Where a failure cannot be
reached that way it is injected at the W&B boundary object (`StageRun.run`, the wandb Run it wraps), and the test
says so. Every test here is at the stage, in this process; the whole flow (`mnist-pipeline run` in a process of its
own) meets W&B failing after a good init in `test_sync_online` (a commit refused mid-flow: the later stages
offline, `sync --dry-run` planning exactly what W&B missed, `sync` completing it) and a W&B unreachable at init in
`test_wandb_offline_fallback` (every stage offline, the same exact plan)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_pipeline.config import PipelineConfig
from prefect_wandb.recording import RecordingWandb
from prefect_wandb.refs import wandb_ref
from prefect_wandb.stage import open_stage
from prefect_wandb.store import LineageStore
from prefect_wandb.sync import plan_sync, run_sync
from prefect_wandb.wandb import stage_run
from tests.wandb_standin import ANY, API_KEY, SilentServer, closed_port, failing

FAST = {"init_timeout": 8, "http_timeout": 2, "http_retries": 1, "artifact_wait_timeout": 5, "finish_timeout": 5}
# Against a host that never answers, the bound itself is what the stage waits out, whatever its size: the tests of
# such a host set the bound it meets short (the others keep FAST's, so a good commit or init is never cut short).
HANG_WAITS = {"artifact_wait_timeout": 1, "finish_timeout": 1}
AFTER_INIT = ["http-401", "http-429", "http-500", "graphql-error", "hang"]


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A clean W&B environment (temporary HOME, a key for the stand-in), and this process's memory of failed
    W&B hosts emptied before and after."""
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    stage_run._online_failures.clear()

    def use(url: str, mode: str = "online", **timeouts: float) -> PipelineConfig:
        """The config of a stage on W&B at `url`: FAST's timeouts, `timeouts` (`finish_timeout=1`) over them."""
        monkeypatch.setenv("WANDB_BASE_URL", url)
        return PipelineConfig.model_validate({
            "artifacts_dir": str(tmp_path / "art"), "lineage_db": str(tmp_path / "lineage.db"),
            "wandb": {"mode": mode, "dir": str(tmp_path / "wandb"), "project": "p", **FAST, **timeouts}})

    yield use
    stage_run._online_failures.clear()


def produce(cfg: PipelineConfig, job_type: str, text: str, inputs=()):
    with open_stage(cfg.lineage(), job_type, config=cfg) as stage:
        for ref in inputs:
            stage.use(ref)
        d = stage.staging(f"{job_type}-out")
        (d / "data.txt").write_text(text)
        stage.produce(f"{job_type}-out", "data", d, {"text": text})
        stage.summary = {"chars": len(text)}
    return stage


def warnings_naming(caplog, call: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(f"W&B {call} failed")]


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
@pytest.mark.parametrize("fault", AFTER_INIT)
def test_stage_completes_when_the_artifact_upload_fails(online, fault, caplog):
    with failing(fault) as w:
        cfg = online(w.url, **(HANG_WAITS if fault == "hang" else {}))
        t = time.monotonic()
        stage = produce(cfg, "prepare-data", "hello")
        took = time.monotonic() - t
    assert stage.mode == "online" and took < 40
    store = LineageStore(cfg.lineage_db)
    run = store.run(stage.run_id)
    [art] = store.artifacts()
    assert run.status == "finished" and run.wandb_mode == "online" and (Path(art.path) / "data.txt").is_file()
    # exactly what W&B is missing: this version's upload (the call that failed is named), nothing else
    ref = wandb_ref(None, "p", art.name, art.digest)
    gaps = store.wandb_gaps(stage.run_id)
    assert [(g.action, g.ref) for g in gaps if g.call != "finish"] == [("upload", ref)]
    failed_call = gaps[0].call
    assert failed_call in ("log_artifact", "artifact wait")
    # a W&B that answers, even with errors, lets the run finish: only a host that hangs may leave a finish gap
    assert not [g for g in gaps if g.call == "finish"] or fault == "hang"
    assert len(warnings_naming(caplog, failed_call)) == 1
    assert API_KEY not in caplog.text

    # sync plans exactly that, sends it once, and a second sync sends nothing
    plan = plan_sync(store)
    [entry] = plan.runs
    assert [(a.action, a.ref, a.status) for a in entry.actions if a.kind == "artifact"] == [
        ("upload", ref, "pending")]
    assert not [a for a in entry.actions if a.kind == "run"] or fault == "hang"  # the run's history
    wb = RecordingWandb(runs=[stage.run_id])
    result = run_sync(store, plan, wb)
    assert result.ok, result
    assert [c[0] for c in wb.calls if c[0] in ("log_artifact", "upload", "declare_inputs")] == ["log_artifact"]
    again = RecordingWandb(runs=[stage.run_id], artifacts=wb.artifacts)
    run_sync(store, plan_sync(store), again)
    assert [c for c in again.calls if c[0] not in ("check", "run_exists")] == []


@pytest.mark.slow  # the wandb SDK online
def test_after_a_failure_the_next_stage_records_offline_and_sync_plans_both(online, caplog):
    with failing("graphql-error") as w:
        cfg = online(w.url)
        first = produce(cfg, "prepare-data", "hello")
        ref = first.outputs["data"]
        second = produce(cfg, "train", "model", inputs=[ref])
    assert (first.mode, second.mode) == ("online", "offline")
    assert any("ago in this process" in r.getMessage() for r in caplog.records)  # no second wait on the host
    store = LineageStore(cfg.lineage_db)
    plan = {r.run_id: r for r in plan_sync(store).runs}
    pending = {rid: [(a.action, a.kind) for a in r.actions if a.status == "pending"] for rid, r in plan.items()}
    assert pending[first.run_id] == [("upload", "artifact")]
    assert pending[second.run_id] == [("upload", None), ("use", None)]
    # the offline consumer's edge waits for the producer's version to be in W&B: a sync that cannot log it
    # blocks the edge instead of declaring an input W&B does not have
    wb = RecordingWandb(runs=[first.run_id], fail={"log_artifact": RuntimeError("HTTP 500")})
    result = run_sync(store, plan_sync(store), wb)
    use = [a for r in result.runs for a in r.actions if a.action == "use"]
    assert [a.status for a in use] == ["blocked"] and not result.ok


def test_use_artifact_failure_is_an_input_edge_for_sync(online, caplog):
    with failing("graphql-error") as w:
        cfg = online(w.url, mode="offline")
        producer = produce(cfg, "prepare-data", "hello")  # offline: no W&B call at all
        cfg = online(w.url, mode="online")
        consumer = produce(cfg, "train", "model", inputs=[producer.outputs["data"]])
    assert consumer.mode == "online"
    store = LineageStore(cfg.lineage_db)
    gaps = store.wandb_gaps(consumer.run_id)
    ref = wandb_ref(None, "p", producer.outputs["data"].name, producer.outputs["data"].digest)
    assert (gaps[0].action, gaps[0].ref, gaps[0].call) == ("use", ref, "use_artifact")
    assert len(warnings_naming(caplog, "use_artifact")) == 1  # the later calls are not sent, and not warned again
    assert store.edges(consumer.run_id).used[0].digest == producer.outputs["data"].digest
    plan = {r.run_id: r for r in plan_sync(store).runs}
    assert ("use", ref) in [(a.action, a.ref) for a in plan[consumer.run_id].actions]


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
def test_a_hanging_use_artifact_is_a_bounded_input_gap(online, caplog):
    """Only `UseArtifact` hangs (W&B accepting the request and never answering): the consumer still completes
    within the bounds and its input edge is left to sync; the producer's version is in W&B."""
    with failing() as w:
        w.fail("UseArtifact", "hang", times=None)
        cfg = online(w.url)
        producer = produce(cfg, "prepare-data", "hello")
        t = time.monotonic()
        consumer = produce(cfg, "train", "model", inputs=[producer.outputs["data"]])
        took = time.monotonic() - t
        state = w.state()
    assert consumer.mode == "online" and took < 60
    assert w.count("UseArtifact") >= 1
    assert [v["state"] for v in state["collections"][f"{w.entity}/p/prepare-data-out"]["versions"]] == ["COMMITTED"]
    ref = wandb_ref(None, "p", producer.outputs["data"].name, producer.outputs["data"].digest)
    gaps = LineageStore(cfg.lineage_db).wandb_gaps(consumer.run_id)
    assert ("use", ref) in [(g.action, g.ref) for g in gaps], gaps


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
def test_alias_save_failure_leaves_the_promotion_to_sync(online, caplog):
    with failing("http-500") as w:
        cfg = online(w.url, mode="offline")
        producer = produce(cfg, "train", "model")
        cfg = online(w.url, mode="online")
        with open_stage(cfg.lineage(), "promote", config=cfg) as stage:
            applied = stage.set_aliases(producer.outputs["data"], ["candidate", "production"],
                                        registry_path="wandb-registry-model/x")
    assert applied is False and stage.mode == "online"
    gaps = LineageStore(cfg.lineage_db).wandb_gaps(stage.run_id)
    assert [(g.action, g.call, g.detail) for g in gaps] == [("aliases", "alias save", "candidate,production")]
    assert len(warnings_naming(caplog, "alias save")) == 1


def test_registry_link_failure_injected_at_the_boundary(online, caplog, monkeypatch):
    """Injected at the W&B boundary object (a version W&B does not hold, a link that raises)."""
    with failing() as w:
        cfg = online(w.url)
        with open_stage(cfg.lineage(), "promote", config=cfg) as stage:
            class Art:
                aliases: list = []

                def save(self):
                    return None

            monkeypatch.setattr(stage.wandb.run, "use_artifact", lambda ref: Art())
            monkeypatch.setattr(stage.wandb.run, "link_artifact", lambda *a, **k: (_ for _ in ()).throw(
                RuntimeError("registry wandb-registry-model not found")))
            from prefect_wandb.refs import ArtifactRef
            ref = ArtifactRef(name="m", type="model", version=0, digest="ab" * 32, path=str(cfg.artifacts_dir))
            assert stage.set_aliases(ref, ["production"], registry_path="wandb-registry-model/m") is False
    gaps = LineageStore(cfg.lineage_db).wandb_gaps(stage.run_id)
    assert [(g.call, g.detail) for g in gaps] == [("registry link", "link to wandb-registry-model/m")]
    assert "registry wandb-registry-model not found" in warnings_naming(caplog, "registry link")[0]


@pytest.mark.slow
def test_registry_link_failure_at_the_network(online, caplog):
    """The stand-in fails only `LinkArtifact`: the alias save reaches W&B, the link is a gap for sync."""
    with failing() as w:
        w.fail("LinkArtifact", "graphql-error")
        cfg = online(w.url)
        producer = produce(cfg, "train", "model")
        with open_stage(cfg.lineage(), "promote", config=cfg) as stage:
            applied = stage.set_aliases(producer.outputs["data"], ["production"],
                                        registry_path="wandb-registry-model/m")
    assert applied is False and w.count("LinkArtifact") == 1
    gaps = LineageStore(cfg.lineage_db).wandb_gaps(stage.run_id)
    assert [(g.call, g.detail) for g in gaps] == [("registry link", "link to wandb-registry-model/m")]
    assert len(warnings_naming(caplog, "registry link")) == 1
    [version] = w.state()["collections"][f"{w.entity}/p/train-out"]["versions"]
    assert "production" in version["aliases"]  # the alias save before the link did reach W&B
    assert [c for c in w.state()["collections"].values() if c["kind"] == "portfolio"] == []


def test_finish_that_raises_is_recorded_not_raised(online, caplog, monkeypatch):
    """Injected at the W&B boundary object: `run.finish()` raising (wandb raises TimeoutError there when
    finish_timeout runs out with finish_timeout_raises, which the stand-in reaches only together with other
    failures)."""
    with failing() as w:
        cfg = online(w.url)
        with open_stage(cfg.lineage(), "evaluate", config=cfg) as stage:
            real_finish = stage.wandb.run.finish

            def finish(*a, **k):
                real_finish(*a, **k)
                raise TimeoutError("Timed out waiting for the run to finish uploading")

            monkeypatch.setattr(stage.wandb.run, "finish", finish)
            d = stage.staging("m")
            (d / "m.json").write_text("{}")
            stage.produce("m", "metrics", d)
            monkeypatch.setattr(stage.wandb.run, "log_artifact", lambda *a, **k: _Committed())
    store = LineageStore(cfg.lineage_db)
    assert store.run(stage.run_id).status == "finished" and len(store.artifacts()) == 1
    gaps = store.wandb_gaps(stage.run_id)
    assert [(g.action, g.call) for g in gaps] == [("upload", "finish")]
    assert len(warnings_naming(caplog, "finish")) == 1
    [entry] = plan_sync(store).runs
    assert [(a.action, a.kind) for a in entry.actions] == [("upload", "run")]
    result = run_sync(store, plan_sync(store), RecordingWandb(runs=[stage.run_id]))
    assert result.ok and "history it missed" in result.runs[0].actions[0].detail


class _Committed:
    def wait(self, timeout=None):
        return self


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
@pytest.mark.parametrize("where", ["closed-port", "never-answers", "init-401"])
def test_init_failures_record_offline(online, where, caplog):
    init = 3 if where == "never-answers" else FAST["init_timeout"]  # a host that never answers waits it out
    t = time.monotonic()
    if where == "closed-port":
        stage = produce(online(closed_port()), "prepare-data", "x")
    elif where == "never-answers":
        with SilentServer() as s:
            stage = produce(online(s.url, init_timeout=init), "prepare-data", "x")
    else:
        with failing("http-401", at=ANY) as w:
            stage = produce(online(w.url), "prepare-data", "x")
    assert stage.mode == "offline" and time.monotonic() - t < init + 20
    assert any("W&B online init failed" in r.getMessage() for r in caplog.records)
    assert API_KEY not in caplog.text


@pytest.mark.slow
def test_auto_mode_follows_wandb_login(online, tmp_path, monkeypatch):
    """`--wandb-mode auto` is online exactly when wandb has a key for its host: here from `wandb login --host`."""
    monkeypatch.delenv("WANDB_API_KEY")
    with failing() as w:
        cfg = online(w.url, mode="auto")
        monkeypatch.delenv("WANDB_BASE_URL")
        assert produce(cfg, "prepare-data", "x").mode == "offline"  # no key anywhere: offline
        subprocess.run([sys.executable, "-m", "wandb", "login", "--host", w.url, API_KEY], check=True,
                       capture_output=True, timeout=120, env=os.environ.copy())
        assert produce(cfg, "train", "y").mode == "online"  # the user's `wandb login --host`: online


def test_where_the_records_went(online, tmp_path):
    """The end-of-run line: online with the group's W&B URL and nothing to sync; offline with the folder, the
    reason and the sync command."""
    from prefect_wandb.queries import where_records_went

    with failing() as w:
        cfg = online(w.url)
        with open_stage(cfg.lineage(), "evaluate", config=cfg, flow_run_id="f1") as stage:  # no outputs: nothing the stand-in cannot store
            stage.log({"x": 1})
    store = LineageStore(cfg.lineage_db)
    out = where_records_went(store, "f1")
    assert out.mode == "online" and not out.needs_sync
    assert out.line == f"W&B: online at {w.url}/{w.entity}/p/groups/flow-f1"
    cfg = online(w.url, mode="offline")
    with open_stage(cfg.lineage(), "evaluate", config=cfg, flow_run_id="f2"):
        pass
    out = where_records_went(store, "f2", offline_reason="wandb mode offline was asked for", command="mnist-pipeline")
    assert out.mode == "offline" and out.needs_sync and out.offline_dirs == [str(tmp_path / "wandb" / "wandb")]
    assert out.line == (f"W&B: offline in {tmp_path / 'wandb' / 'wandb'} (wandb mode offline was asked for); "
                           f"`mnist-pipeline sync --lineage-db {cfg.lineage_db}` uploads what W&B is missing")
