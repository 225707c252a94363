"""`mnist-pipeline sync --verify`: W&B compared with the lineage store, read-only, with the recording backend
(an in-memory W&B) holding all, none or part of the lineage; and every W&B error as one line and an exit code.

The store is made by real offline stages (wandb offline in a temp dir, SQLite) and a recorded promotion."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import _parser, main
from mnist_pipeline.config import PipelineConfig
from prefect_wandb import GatePolicy
from prefect_wandb.cli.audit import sync_main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.promotion import promote
from prefect_wandb.recording import RecordingWandb
from prefect_wandb.stage import open_stage
from prefect_wandb.store import LineageStore
from prefect_wandb.sync import plan_sync, run_sync
from prefect_wandb.wandb.client import WandbClient
from prefect_wandb.wandb.settings import WandbTimeouts
from prefect_wandb.wandb_compare import verify_wandb
from tests.wandb_standin import API_KEY, closed_port, failing


@pytest.fixture
def lineage(tmp_path: Path, wandb_offline) -> dict:
    """prepare-data -> dataset -> train -> model (promoted), recorded offline."""
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"),
                                         "lineage_db": str(tmp_path / "lineage.db"),
                                         "wandb": {"mode": "offline", "project": "p"}})
    out = {}
    for job, name, inputs in (("prepare-data", "dataset", []), ("train", "model", ["dataset"])):
        with open_stage(cfg.lineage(), job, config=cfg) as stage:
            for i in inputs:
                stage.use(out[i])
            d = stage.staging(name)
            (d / f"{name}.bin").write_bytes(name.encode() * 100)
            stage.produce(name, name, d)
        out[name] = stage.outputs[name]
        out[f"{name}_run"] = stage.run_id
    store = LineageStore(cfg.lineage_db)
    model = store.find_artifact("model", out["model"].digest)
    promote(store, model.artifact_id, value=0.9, validation_passed=True, policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0),
            flow_run_id=None)
    return {**out, "db": cfg.lineage_db, "store": store}


def synced_wandb(lineage) -> RecordingWandb:
    """An in-memory W&B after a complete `sync` of the lineage."""
    wb = RecordingWandb()
    assert run_sync(lineage["store"], plan_sync(lineage["store"]), wb, dry_run=True).ok
    return RecordingWandb(runs=wb.runs, inputs=wb.inputs, artifacts=wb.artifacts)


def verify(db: Path, backend, *args) -> int:
    return sync_main(_parser().parse_args(["sync", "--verify", "--lineage-db", str(db), *args]), backend=backend)


def test_a_complete_wandb_verifies(lineage, capsys):
    wb = synced_wandb(lineage)
    before = sqlite3.connect(lineage["db"]).execute("SELECT count(*) FROM sync_log").fetchone()
    assert verify(lineage["db"], wb) == Exit.OK
    out = capsys.readouterr().out
    assert "2 artifact version(s) compared" in out and out.rstrip().endswith("recorded")
    assert {c[0] for c in wb.calls} == {"check", "lookup_artifact"}  # read-only: nothing sent
    assert sqlite3.connect(lineage["db"]).execute("SELECT count(*) FROM sync_log").fetchone() == before


def test_an_empty_wandb_lists_every_version_missing(lineage, capsys):
    assert verify(lineage["db"], RecordingWandb()) == Exit.VERIFY_FAILED
    out, err = capsys.readouterr()
    assert out.count("missing ") == 2 and "`mnist-pipeline sync`" in err


def test_a_wandb_holding_part_of_the_lineage(lineage):
    """Uploaded, but the train run's input edge and the promotion's aliases never reached W&B."""
    wb = synced_wandb(lineage)
    store = lineage["store"]
    dataset_key = f"dataset:sha256-{lineage['dataset'].digest[:16]}"
    model_key = f"model:sha256-{lineage['model'].digest[:16]}"
    wb.artifacts[dataset_key]["used_by"] = []
    wb.artifacts[model_key]["aliases"] = ["latest", f"sha256-{lineage['model'].digest[:16]}"]
    result = verify_wandb(store, wb)
    kinds = sorted((d.kind, d.artifact.split(":")[0]) for d in result.differences)
    assert kinds == [("alias", "model"), ("alias", "model"), ("input", "dataset")]
    assert lineage["model_run"] in next(d.detail for d in result.differences if d.kind == "input")


def test_other_content_or_producer_under_the_same_alias(lineage):
    wb = synced_wandb(lineage)
    key = f"model:sha256-{lineage['model'].digest[:16]}"
    wb.artifacts[key]["files"] = {"model.bin": "AAAAAAAAAAAAAAAAAAAAAA=="}
    wb.artifacts[key]["logged_by"] = "someone-else"
    kinds = {d.kind for d in verify_wandb(lineage["store"], wb).differences}
    assert kinds == {"content", "producer"}


def test_a_version_two_runs_made_at_once_may_be_logged_by_either_of_them(lineage, tmp_path):
    """Two flow runs preparing the same data at the same moment: the store keeps the version once, with its first
    committer as producer and a `produced` edge from the other; W&B may have heard the other first. Either run is
    the version's producer (as `audit --online` already said); a third run is not."""
    store = lineage["store"]
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "lineage_db": str(lineage["db"]),
                                         "wandb": {"mode": "offline", "project": "p"}})
    with open_stage(cfg.lineage(), "prepare-data", config=cfg) as stage:
        d = stage.staging("dataset")
        (d / "dataset.bin").write_bytes(b"dataset" * 100)  # the same bytes as the fixture's dataset
        stage.produce("dataset", "dataset", d)
    assert stage.outputs["dataset"].digest == lineage["dataset"].digest
    rec = store.find_artifact("dataset", lineage["dataset"].digest)
    assert rec.producer_run_id == lineage["dataset_run"] and stage.run_id in store.producers(rec.artifact_id)
    wb = synced_wandb(lineage)
    key = f"dataset:sha256-{lineage['dataset'].digest[:16]}"
    wb.artifacts[key]["logged_by"] = stage.run_id
    assert not [d for d in verify_wandb(store, wb).differences if d.kind == "producer"]
    wb.artifacts[key]["logged_by"] = "someone-else"
    [diff] = [d for d in verify_wandb(store, wb).differences if d.kind == "producer"]
    assert f"{lineage['dataset_run']} or {stage.run_id}" in diff.detail


def test_a_dry_run_rehearses_a_promotion_of_a_version_committed_online(lineage, capsys):
    """The model committed in W&B by an online run, the promotion recorded while W&B was away (its alias move waits
    for `sync`): the dry run plans the move onto the version W&B has, instead of calling it 'not found'."""
    import json

    with sqlite3.connect(lineage["db"]) as con:  # as the stages' records read when they ran online
        con.execute("UPDATE runs SET wandb_mode = 'online'")
    capsys.readouterr()
    assert main(["sync", "--dry-run", "--json", "--lineage-db", str(lineage["db"])]) == Exit.OK
    [move] = json.loads(capsys.readouterr().out)["promotions"]
    assert move["artifact"] == "model:v0" and move["status"] == "done", move
    assert move["aliases"] == ["candidate", "production"]


def test_a_locally_tampered_file_is_named_as_the_local_difference_not_blamed_on_wandb(lineage, capsys):
    """W&B holds what was recorded; the stored file changed since: that file is named (as `audit` names it), exit 3,
    and `sync` (which would change nothing) is not offered for it."""
    wb = synced_wandb(lineage)
    store = lineage["store"]
    model = store.find_artifact("model", lineage["model"].digest)
    stored = Path(model.path) / "model.bin"
    stored.write_bytes(b"swapped" * 100)
    assert verify(lineage["db"], wb) == Exit.VERIFY_FAILED
    out, err = capsys.readouterr()
    [diff] = verify_wandb(store, wb).differences
    assert (diff.kind, diff.artifact) == ("local", model.label)
    assert f"{stored}: sha256 " in diff.detail and f"does not match the recorded {model.files[0].sha256}" in \
        diff.detail and "not W&B's copy" in diff.detail
    assert f"local    {model.label} " in out and "W&B's md5" not in out
    assert err.count("\n") == 1 and err.startswith(f"mnist-pipeline sync: --verify: TAMPERED: {stored}: sha256 ")
    assert f"`mnist-pipeline audit {model.label}` names every changed file" in err
    assert "sync` sends" not in err + out
    # with something W&B itself lacks as well, sync is offered for that, and the tampered file is still named first
    wb.artifacts[f"model:sha256-{lineage['model'].digest[:16]}"]["aliases"] = ["latest"]
    assert verify(lineage["db"], wb) == Exit.VERIFY_FAILED
    err = capsys.readouterr().err
    assert "TAMPERED: " in err and "W&B differs from the lineage store in 2 place(s); `mnist-pipeline sync` sends" in err


def test_one_version_missing_from_an_otherwise_complete_wandb(lineage):
    """A W&B that holds the lineage except one version (an online upload that failed): only that one differs."""
    wb = synced_wandb(lineage)
    key = f"model:sha256-{lineage['model'].digest[:16]}"
    del wb.artifacts[key]
    assert [d.kind for d in verify_wandb(lineage["store"], wb).differences] == ["missing"]


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
@pytest.mark.parametrize("fault", ["http-500", "graphql-error", "http-401"])
def test_wandb_errors_in_verify_are_one_line_and_exit_5(lineage, capsys, monkeypatch, tmp_path, fault):
    """The real client against the loopback stand-in: its check (`Viewer`) passes, the artifact lookups fail."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with failing(fault) as w:
        monkeypatch.setenv("WANDB_BASE_URL", w.url)
        code = verify(lineage["db"], WandbClient(timeout=3, timeouts=WandbTimeouts(http=2, retries=1)))
    out, err = capsys.readouterr()
    assert code == Exit.WANDB_UNAVAILABLE, err
    assert err.count("\n") == 1 and err.startswith("mnist-pipeline sync: --verify: ") and "Traceback" not in err
    assert API_KEY not in err + out


def _free_port_containing_404() -> int:
    import socket

    for port in [*range(40400, 40500), *range(14040, 14050), *range(24040, 24050)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free loopback port with 404 in its number")


@pytest.mark.slow  # waits out a real retry against a loopback endpoint
def test_a_wandb_error_from_a_host_whose_port_contains_404_is_not_a_missing_version(lineage, capsys, monkeypatch,
                                                                                    tmp_path):
    """wandb's HTTP errors name the URL: the digits of a port (here 404xx) are not an HTTP 404 (this failed by chance
    when the stand-in's ephemeral port happened to contain them)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with failing("http-500", port=_free_port_containing_404()) as w:
        assert "404" in w.url
        monkeypatch.setenv("WANDB_BASE_URL", w.url)
        code = verify(lineage["db"], WandbClient(timeout=3, timeouts=WandbTimeouts(http=2, retries=1)))
    err = capsys.readouterr().err
    assert code == Exit.WANDB_UNAVAILABLE, err
    assert "differs" not in err and err.count("\n") == 1


def test_no_wandb_is_one_line_and_exit_5_for_verify_and_audit_online(lineage, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", closed_port())
    assert verify(lineage["db"], None) == Exit.WANDB_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err
    code = main(["audit", "model:production", "--online", "--lineage-db", str(lineage["db"])])
    err = capsys.readouterr().err
    assert code == Exit.WANDB_UNAVAILABLE and err.startswith("mnist-pipeline audit: --online: ") and "Traceback" not in err


def test_audit_online_any_wandb_error_is_one_line(lineage, capsys):
    """Injected at the backend (the W&B boundary): a lookup raising an error that is not ours."""
    wb = RecordingWandb(fail={"lookup_artifact": KeyError("schema changed: field 'manifest' unknown")})
    from prefect_wandb.cli.audit import audit_main

    code = audit_main(_parser().parse_args(["audit", "model:production", "--online", "--lineage-db",
                                            str(lineage["db"])]), backend=wb)
    err = capsys.readouterr().err
    assert code == Exit.WANDB_UNAVAILABLE and err.count("\n") == 1 and "schema changed" in err


def test_a_missing_run_or_version_is_told_from_wandb_failing_by_the_errors_type_not_its_text():
    import requests
    from wandb.apis.public.runs import RunNotFoundError
    from wandb.errors import CommError

    from prefect_wandb.wandb.client import _not_found

    def http(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code, response.url = status, "http://127.0.0.1:40404/graphql"
        return requests.HTTPError(f"{status} error for url: {response.url}", response=response)

    # what wandb 0.31 raises for a run or an artifact version it does not have
    assert _not_found(RunNotFoundError("Could not find run <Run e/p/x (not found)>"))
    assert _not_found(CommError("artifact membership 'm:sha256-00' not found in 'e/p'", ValueError("not found")))
    assert _not_found(CommError("HTTP 404: no such project", http(404)))
    # W&B failing to answer: whatever its text says (a URL with 404 in its port, "not found" in a proxy's page)
    assert not _not_found(CommError("HTTP 500: upstream at http://127.0.0.1:40404 not found", http(500)))
    assert not _not_found(CommError("connection refused", requests.ConnectionError("127.0.0.1:404 refused")))
    assert not _not_found(requests.ConnectionError("Max retries exceeded with url: /graphql (not found)"))
