"""examples/regressor, a second pipeline on prefect_wandb's public API only: its flow run for real under Prefect
(the test server), W&B offline in a temp dir or online against the stand-in, and the operator commands of
`mnist-pipeline` (audit, gc, sync) working on its records, alone and beside the MNIST pipeline in one store."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.helpers import REPO, offline_run_env, tiny_config, use_offline_wandb

EXAMPLE = REPO / "examples" / "regressor"


def mnist_pipeline_cli(*args: str) -> tuple[int, str]:
    """`mnist-pipeline *args` in this process, through the entry point pyproject.toml declares: (exit code, stdout
    and stderr). The command is found where the project says it is, wherever its module lives now."""
    import contextlib
    import io

    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["mnist-pipeline"]
    module, func = target.split(":")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        mp.setattr(sys, "argv", ["mnist-pipeline", *args])
        try:
            code = getattr(importlib.import_module(module), func)()
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue()


def printed_json(stdout: str) -> dict:
    """The summary the command prints last, as JSON, whatever logs came before it."""
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))


def replay_of(store, rec):
    """What `reproduce` hands a rebuild function for `rec` (`prefect_wandb.Replay`)."""
    from prefect_wandb import Replay

    run = store.run(rec.producer_run_id)
    return Replay(job_type=run.job_type, config=run.config, metadata=rec.metadata, summary=run.summary, env=run.env,
                  inputs={i["type"]: Path(store.find_artifact(i["name"], i["digest"]).path)
                          for i in rec.metadata["inputs"]})


# ----------------------------------------------------------------------- no Prefect server: imports and the command

def test_the_example_imports_only_public_names_of_prefect_wandb_and_nothing_of_mnist():
    import prefect_wandb

    for path in EXAMPLE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                if node.module == "prefect_wandb":
                    assert set(names) <= set(prefect_wandb.__all__), (path.name, names)
                else:
                    assert not node.module.startswith("prefect_wandb.") or node.module.startswith(
                        "prefect_wandb.provenance"), (path.name, node.module)
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for m in modules:
                assert m.split(".")[0] not in {"mnist_pipeline", "flows", "tasks", "torch", "torchvision"}, \
                    (path.name, m)
    # small: a pipeline of another shape is at most about 250 lines on the library (not blank; issue 28)
    assert sum(1 for p in EXAMPLE.glob("*.py") for line in p.read_text().splitlines() if line.strip()) <= 250


@pytest.mark.slow
def test_importing_the_example_imports_neither_torch_nor_mnist_pipeline(tmp_path):
    code = ("import sys, examples.regressor, examples.regressor.flow, examples.regressor.steps; "
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'mnist_pipeline')])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=offline_run_env(tmp_path, api=False),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_runs_from_another_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "examples.regressor", "--help"], cwd=tmp_path,
                          env=offline_run_env(tmp_path, api=False), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--alpha" in proc.stdout and "--sign-key" in proc.stdout and "regressor-runs" in proc.stdout


# ------------------------------------------- one store, five runs of the flow: the command online, then offline

@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory) -> dict:
    """The first run is the command (`python -m examples.regressor`'s `main`, in this process: the process itself
    is `test_the_command_runs_from_another_folder`'s), from another folder (its files under ./regressor-runs),
    signed with a key from $REGRESSOR_SIGN_KEY, recording online into the W&B stand-in (its host handed to wandb
    explicitly, `tests.wandb_inprocess`): what the store and W&B then hold, and `mnist-pipeline sync --verify` of
    it, are kept for the online test. Then offline: an unchanged rerun, a worse alpha and a better one. The
    stand-in lives as long as this module."""
    import contextlib
    import io

    from examples.regressor.__main__ import main as regressor_command
    from examples.regressor.flow import RegressorConfig, regressor_pipeline
    from prefect_wandb import LineageStore
    from prefect_wandb.provenance import keys
    from tests.roundtrip import env_for
    from tests.wandb_inprocess import wandb_env
    from tests.wandb_standin import Standin

    base = tmp_path_factory.mktemp("regressor")
    key, pub = keys.generate(base / "keys")
    (base / "work").mkdir()
    with Standin() as w:
        env = env_for(base, w)
        printed = io.StringIO()
        with wandb_env(env), pytest.MonkeyPatch.context() as mp:
            mp.setenv("REGRESSOR_SIGN_KEY", str(key))
            mp.chdir(base / "work")
            with contextlib.redirect_stdout(printed):
                assert regressor_command(["--wandb-mode", "online"]) == 0, printed.getvalue()[-4000:]
        root = base / "work" / "regressor-runs"
        store = LineageStore(root / "lineage.db")
        with wandb_env(env):
            verify = mnist_pipeline_cli("sync", "--verify", "--lineage-db", str(root / "lineage.db"))
        online = {"runs": store.runs(), "gaps": store.wandb_gaps(), "artifacts": store.artifacts(),
                  "promotions": store.promotions(), "collections": w.state()["collections"],
                  "project": f"{w.entity}/regressor-lineage", "verify": verify}
        with pytest.MonkeyPatch.context() as mp:
            use_offline_wandb(mp, base / "wandb")
            mp.delenv("REGRESSOR_SIGN_KEY", raising=False)
            cfg = RegressorConfig(root=root, wandb_mode="offline")
            skipped = regressor_pipeline(config=cfg, return_state=True)
            worse = regressor_pipeline(config=cfg.model_copy(update={"alpha": 100.0}))
            better = regressor_pipeline(config=cfg.model_copy(update={"alpha": 10.0}))
            production = store.alias("ridge", "production").label
            new_data = regressor_pipeline(config=cfg.model_copy(update={"alpha": 10.0, "rows": 600}))
        yield {"root": root, "db": root / "lineage.db", "store": store, "key": key, "pub": pub,
               "first": printed_json(printed.getvalue()), "online": online, "skipped": skipped, "worse": worse,
               "better": better, "production_after_better": production, "new_data": new_data}


def test_every_stage_is_on_record_with_its_edges(runs):
    store, first = runs["store"], runs["first"]
    assert Path(first["lineage_db"]) == runs["db"].resolve() and (runs["root"] / "artifacts").is_dir()
    assert first["status"] == "completed" and first["promotion"]["decision"] == "promoted"
    assert set(first["artifacts"]) == {"dataset", "model", "metrics", "onnx", "validation", "attestation"}
    assert all(r.status == "finished" for r in store.runs())
    made_by = {}
    for run in store.runs():
        edges = store.edges(run.run_id)
        for art in edges.produced:
            made_by[art.type] = (run.job_type, sorted(a.type for a in edges.used))
    assert made_by == {"dataset": ("generate-data", []), "features": ("features", ["dataset"]),
                       "model": ("fit", ["dataset", "features"]), "metrics": ("evaluate", ["dataset", "model"]),
                       "onnx": ("export-onnx", ["model"]),
                       "validation": ("validate-onnx", ["dataset", "model", "onnx"]),
                       "attestation": ("sign", ["dataset", "model", "onnx", "validation"])}
    model = store.find_artifact("ridge", first["artifacts"]["model"]["digest"])
    assert model.metadata["fingerprint"] == {"alpha": 1.0, "degree": 2, "seed": 0, "n_rows": 400}
    v = store.artifacts("validation")[0].metadata
    assert v["passed"] is True and v["max_abs_diff"] < 1e-3


def test_an_unchanged_rerun_is_skipped(runs):
    state, store = runs["skipped"], runs["store"]
    assert state.is_completed() and state.name == "Completed" and state.message.startswith("fit skipped: ")
    summary = state.result()
    assert summary["status"] == "skipped" and summary["production"] == "ridge:v0"
    assert [r.job_type for r in store.runs(str(state.state_details.flow_run_id))] == ["generate-data"]


def test_the_gate_promotes_a_lower_rmse_and_keeps_a_higher_one_candidate(runs):
    store, first, worse, better = runs["store"], runs["first"], runs["worse"], runs["better"]
    rmse = {s["artifacts"]["model"]["label"]: store.find_artifact("ridge-metrics", s["artifacts"]["metrics"]["digest"])
            .metadata["rmse"] for s in (first, worse, better)}
    assert rmse["ridge:v1"] > rmse["ridge:v0"] > rmse["ridge:v2"]
    assert worse["promotion"]["decision"] == "candidate" and "rmse" in worse["promotion"]["reason"]
    assert better["promotion"]["decision"] == "promoted", better["promotion"]
    assert runs["production_after_better"] == "ridge:v2"
    assert [p.decision for p in store.promotions()][:3] == ["promoted", "candidate", "promoted"]


def test_production_is_evaluated_on_a_new_test_set_before_the_gate_compares(runs):
    store, new = runs["store"], runs["new_data"]
    assert new["artifacts"]["dataset"]["label"] == "houses:v1"
    reason = new["promotion"]["reason"]
    assert "production ridge:v2" in reason and "re-evaluated on houses:v1" in reason, reason
    again = [m for m in store.artifacts("metrics") if {(i["name"], i["version"]) for i in m.metadata["inputs"]}
             == {("ridge", 2), ("houses", 1)}]
    assert len(again) == 1 and f"rmse {new['rmse']:.4f}" in reason


def test_the_audit_verifies_the_regressors_onnx_file_from_either_command(runs, capsys):
    from prefect_wandb.cli import main

    code, out = mnist_pipeline_cli("audit", "ridge-onnx:v0", "--lineage-db", str(runs["db"]))
    assert code == 0, out[-3000:]
    assert "VERIFIED: ridge-onnx:v0" in out and "houses:v0 (dataset)" in out
    assert main(["audit", "ridge-onnx:v0", "--lineage-db", str(runs["db"])]) == 0  # the library's own command
    assert "VERIFIED: ridge-onnx:v0" in capsys.readouterr().out


def test_the_signed_onnx_file_verifies(runs):
    from prefect_wandb.provenance.verify import VERIFIED, verify

    att = runs["first"]["artifacts"]["attestation"]
    assert att["label"] == "ridge-onnx-attestation:v0"
    onnx_file = Path(runs["first"]["onnx_file"])
    assert verify(onnx_file, runs["pub"], attestation=Path(att["path"])).status == VERIFIED
    assert verify(onnx_file, runs["pub"]).status == VERIFIED  # found from the file's own artifact folder


def test_the_rebuilders_remake_each_recorded_output_bit_for_bit(runs, tmp_path):
    from examples.regressor.steps import REBUILDERS
    from prefect_wandb import manifest, manifest_digest

    store, seen = runs["store"], set()
    for rec in store.artifacts():
        job = rec.metadata["producer"]["job_type"]
        if job in REBUILDERS:
            out = tmp_path / rec.type / str(rec.version)
            out.mkdir(parents=True)
            REBUILDERS[job](replay_of(store, rec), out)
            assert manifest_digest(manifest(out)) == rec.digest, rec.label
            seen.add(job)
    assert seen == set(REBUILDERS)


def test_reproduce_re_makes_the_onnx_file_through_its_chain_with_the_rebuilders(runs, capsys):
    """`prefect-wandb reproduce` with the example's REBUILDERS: features -> fit -> export-onnx from the recorded
    dataset, every step IDENTICAL; without them, it says which stages it can re-run (none: exit 2)."""
    from prefect_wandb.cli import main

    db = str(runs["db"])
    assert main(["reproduce", "ridge-onnx:v0", "--rebuilders", "examples.regressor.steps:REBUILDERS",
                 "--lineage-db", db, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [s["job_type"] for s in res["steps"]] == ["features", "fit", "export-onnx"]
    assert res["status"] == "identical" and [c["artifact"] for c in res["comparisons"]] == [
        "houses-features:v0", "ridge:v0", "ridge-onnx:v0"]
    assert not [w for w in res["warnings"] if w.startswith("package ")]  # recorded packages = installed ones
    assert main(["reproduce", "ridge-onnx:v0", "--lineage-db", db]) == 2
    err = capsys.readouterr().err
    assert "no rebuild functions" in err and "--rebuilders MODULE:NAME" in err


# --------------------------------------------------------------------------------- beside MNIST, in one store, gc

@pytest.mark.slow
def test_the_mnist_pipeline_and_the_regressor_share_a_store_and_gc(prefect_server, tmp_path, monkeypatch):
    from examples.regressor.flow import RegressorConfig, regressor_pipeline
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
    from prefect_wandb import LineageStore

    use_offline_wandb(monkeypatch, tmp_path / "wandb")
    root = tmp_path / "shared"
    cfg = RegressorConfig(root=root, wandb_mode="offline")
    regressor_pipeline(config=cfg)
    mnist = mnist_lineage_pipeline(config=tiny_config(tmp_path, artifacts_dir=str(root / "artifacts"),
                                                      lineage_db=str(root / "lineage.db"),
                                                      train={"watch": False})).to_dict()
    store = LineageStore(root / "lineage.db")
    assert store.alias("ridge", "production").label == "ridge:v0"  # MNIST's gate left it alone
    assert store.alias("convnet", "production").label == "convnet:v0"
    assert regressor_pipeline(config=cfg.model_copy(update={"alpha": 10.0}))["promotion"]["decision"] == "promoted"
    # a third, better still (RMSE 0.2689 < 0.2695): ridge:v1 becomes what rollback would go back to, v0 nothing
    better = regressor_pipeline(config=cfg.model_copy(update={"alpha": 5.0}))
    assert better["promotion"]["decision"] == "promoted"
    assert store.alias("convnet", "production").label == "convnet:v0"  # and the regressor's gate MNIST's

    code, out = mnist_pipeline_cli("gc", "--keep-last", "1", "--lineage-db", str(root / "lineage.db"),
                                   "--artifacts-dir", str(root / "artifacts"), "--apply")
    assert code == 0, out[-3000:]
    deleted = {store.artifact(i).label for i in store.deletions()}
    assert "ridge:v0" in deleted, out[-3000:]  # gc did remove something: the regressor's replaced model
    assert "keep ridge:v1: rollback target of production ridge:v2" in out and "ridge:v1" not in deleted
    assert not any(label.startswith(("convnet", "mnist")) for label in deleted), deleted
    for onnx in (mnist["artifacts"]["onnx"]["path"], better["artifacts"]["onnx"]["path"]):
        code, out = mnist_pipeline_cli("audit", str(Path(onnx) / "model.onnx"), "--lineage-db",
                                       str(root / "lineage.db"))
        assert code == 0, out[-3000:]  # each production's lineage is whole


# ------------------------------------------------------------------------------------------ online, the stand-in

def test_the_flow_records_online_and_sync_verify_agrees(runs):
    """The module's first run, the command recording online into the W&B stand-in (`runs`), as it stood then."""
    online = runs["online"]
    assert {r.wandb_mode for r in online["runs"]} == {"online"} and not online["gaps"]
    collections = online["collections"]
    for art in online["artifacts"]:
        versions = collections[f"{online['project']}/{art.name}"]["versions"]
        assert [v["state"] for v in versions] == ["COMMITTED"], art.label
    [decision] = online["promotions"]  # the gate's aliases moved in W&B by the promote stage itself
    assert decision.decision == "promoted" and decision.wandb_applied_at
    assert {"production", "candidate"} <= set(collections[f"{online['project']}/ridge"]["versions"][0]["aliases"])
    code, out = online["verify"]
    assert code == 0, out[-3000:]
