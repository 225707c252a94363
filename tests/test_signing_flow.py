"""A pipeline run given a signing key, then its ONNX file verified offline: real Prefect (test server), real
wandb (offline), real model-signing and its CLI; tampering, another key, an edited Statement, a moved copy, a
process that cannot import torch, prefect or wandb; and the private key's bytes nowhere the run wrote."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mnist_pipeline.cli.main import main as sign_main
from mnist_pipeline.config import SIGN_KEY_ENV, PipelineConfig
from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
from prefect_wandb.provenance import dsse, keys
from prefect_wandb.provenance.verify import verify
from prefect_wandb.store import LineageStore
from prefect_wandb.wandb.run_file import offline_records
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def test_a_signed_run_verifies_offline_and_with_the_model_signing_cli(signed_run, capsys):
    s, pub = signed_run["summary"], signed_run["pub"]
    store = LineageStore(signed_run["tmp"] / "lineage.db")
    att = store.require_artifact(s["artifacts"]["attestation"]["ref"].split(":")[0],
                                 s["artifacts"]["attestation"]["digest"])
    assert att.type == "attestation" and att.name == "convnet-onnx-attestation"
    [sign_run] = [r for r in store.runs() if r.job_type == "sign"]
    assert {u.type for u in store.edges(sign_run.run_id).used} == {"onnx", "model", "dataset", "validation"}
    assert att.metadata["public_key_fingerprint"] == keys.fingerprint(keys.load_public(pub))
    # logged to W&B (offline) like every artifact
    wandb_arts = [r.artifact.name for f in (signed_run["tmp"] / "wandb").rglob("offline-run-*/run-*.wandb")
                  for r in offline_records(f) if r.WhichOneof("record_type") == "artifact"]
    assert "convnet-onnx-attestation" in wandb_arts

    # the signed copy in the attestation folder, and the original in its immutable artifact folder
    for onnx_file in (s["signed_onnx_file"], s["onnx_file"]):
        assert sign_main(["verify", onnx_file, "--public-key", str(pub)]) == 0
        out = capsys.readouterr().out
        for part in ("statement signature", "subject digest", "model-signing bundle", "├─ dataset", "─ raw  ",
                     "├─ model", "├─ code", "├─ config", "validation.json"):
            assert part in out, (part, out)
    assert s["onnx_file"] != s["signed_onnx_file"] and Path(s["onnx_file"]).read_bytes() == \
        Path(s["signed_onnx_file"]).read_bytes()

    r = verify(Path(s["onnx_file"]), pub)
    st = r.statement
    bd, rd = st["predicate"]["buildDefinition"], st["predicate"]["runDetails"]
    dataset = store.require_artifact("mnist", s["artifacts"]["dataset"]["digest"])
    [ds] = [d for d in bd["resolvedDependencies"] if d["annotations"]["role"] == "dataset"]
    assert ds["digest"]["sha256"] == dataset.digest
    raws = {d["name"]: d["digest"]["sha256"] for d in bd["resolvedDependencies"]
            if d["annotations"]["role"] == "raw-file"}
    assert raws == {f["name"]: f["sha256"] for f in dataset.metadata["raw_files"]} and len(raws) == 4
    assert bd["externalParameters"]["config"]["train"]["epochs"] == 1
    assert set(bd["internalParameters"]) == {"seed", "threads", "device"}
    assert rd["metadata"]["invocationId"] == sign_run.flow_run_id
    assert rd["builder"]["id"] == "urn:mnist-lineage-pipeline:cli"
    assert rd["byproducts"][0]["annotations"]["passed"] is True
    [code] = [d for d in bd["resolvedDependencies"] if d["annotations"]["role"] == "code"]
    assert code["annotations"]["dirty"] == sign_run.env["git_dirty"]

    folder = Path(att.path)
    run = subprocess.run([str(MODEL_SIGNING), "verify", "key", s["onnx_file"], "--signature",
                          str(folder / "model.onnx.sig"), "--public_key", str(pub)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr

    # the ONNX file's own provenance pointers agree with the store
    from mnist_pipeline.onnx_io import read_metadata

    meta = read_metadata(Path(s["onnx_file"]))
    onnx_rec = store.require_artifact("convnet-onnx", s["artifacts"]["onnx"]["digest"])
    model_rec = store.require_artifact("convnet", s["artifacts"]["model"]["digest"])
    assert meta["train_run_id"] == model_rec.producer_run_id and store.run(meta["train_run_id"]).job_type == "train"
    assert meta["train_flow_run_id"] == sign_run.flow_run_id and onnx_rec.producer_run_id != meta["train_run_id"]
    assert meta["dataset_digest"] == dataset.digest
    assert meta["model_digest"] == s["artifacts"]["model"]["digest"]
    assert json.loads(meta["input_contract"])["shape"] == ["batch", 1, 28, 28]

    # the signed copy does not trouble the audit: the ONNX artifact is the subject, the attestation its signature
    from mnist_pipeline.cli.main import main as cli_main

    db = str(signed_run["tmp"] / "lineage.db")
    assert cli_main(["audit", s["onnx_file"], "--lineage-db", db, "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit["subjects"] == ["convnet-onnx:v0"], audit["subjects"]
    assert [(e["attestation"], e["status"]) for e in audit["signatures"]] == [("convnet-onnx-attestation:v0",
                                                                              "verified")]

    size = sum(p.stat().st_size for p in folder.iterdir() if p.name != "model.onnx")
    print(f"\nsign stage {sign_run.summary['sign_seconds']:.3f} s (signing itself "
          f"{sign_run.summary['signing_seconds']:.3f} s) of a {signed_run['wall']:.1f} s run; attestation "
          f"{size} bytes (+ the {Path(s['onnx_file']).stat().st_size}-byte ONNX copy)")


def _shipped(signed_run, dest: Path) -> Path:
    """The attestation folder copied elsewhere, as it would be to a serving host."""
    src = Path(signed_run["summary"]["signed_onnx_file"]).parent
    shutil.copytree(src, dest)
    return dest / "model.onnx"


def test_tampering_another_key_and_an_edited_statement_fail_naming_what(signed_run, tmp_path, capsys):
    pub = signed_run["pub"]
    flipped = _shipped(signed_run, tmp_path / "flipped")
    blob = bytearray(flipped.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    flipped.write_bytes(bytes(blob))
    assert sign_main(["verify", str(flipped), "--public-key", str(pub)]) == 3
    err = capsys.readouterr().err
    assert f"FAILED subject digest: {flipped}" in err and f"does not verify {flipped}" in err
    assert "FAILED statement signature" not in err

    other = keys.generate(tmp_path / "other")[1]
    good = _shipped(signed_run, tmp_path / "good")
    assert sign_main(["verify", str(good), "--public-key", str(other)]) == 3
    err = capsys.readouterr().err
    assert "FAILED statement signature" in err and "not by the given key" in err
    assert "FAILED model-signing bundle" in err and "FAILED subject digest" not in err

    edited = _shipped(signed_run, tmp_path / "edited")
    env_file = edited.with_name("model.onnx.intoto.json")
    env = json.loads(env_file.read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if d["annotations"]["role"] == "dataset":
            d["digest"]["sha256"] = "0" * 64
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    env_file.write_text(json.dumps(env))
    with pytest.raises(dsse.EnvelopeError, match="changed after signing"):
        dsse.verify(env, keys.load_public(pub))
    assert sign_main(["verify", str(edited), "--public-key", str(pub)]) == 3
    assert "FAILED statement signature: model.onnx.intoto.json: the signature does not match" in \
        capsys.readouterr().err


def test_the_attestation_moved_beside_a_copy_elsewhere_still_verifies(signed_run, tmp_path, capsys):
    pub, src = signed_run["pub"], Path(signed_run["summary"]["signed_onnx_file"]).parent
    host = tmp_path / "serving" / "models"
    host.mkdir(parents=True)
    shutil.copy(signed_run["summary"]["onnx_file"], host / "model.onnx")  # the original, not the signed copy
    for name in ("model.onnx.sig", "model.onnx.intoto.json"):  # just the two files beside it, no index
        shutil.copy(src / name, host / name)
    assert sign_main(["verify", str(host / "model.onnx"), "--public-key", str(pub)]) == 0
    # or kept apart and named
    lone = tmp_path / "lone.onnx"
    shutil.copy(host / "model.onnx", lone)
    assert sign_main(["verify", str(lone), "--public-key", str(pub)]) == 4
    assert sign_main(["verify", str(lone), "--public-key", str(pub), "--attestation", str(src)]) == 0
    capsys.readouterr()


BLOCKER = '''
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "prefect", "wandb"):
            raise ImportError(f"{name} is blocked in this process")
        return None
sys.meta_path.insert(0, _Blocked())
'''


def test_verify_needs_neither_torch_prefect_nor_wandb(signed_run, tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    proof = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=60)
    assert proof.returncode != 0 and "blocked in this process" in proof.stderr  # the blocker works
    run = subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", "verify",
                          signed_run["summary"]["onnx_file"], "--public-key", str(signed_run["pub"])], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verified" in run.stdout and "├─ dataset" in run.stdout


def test_the_private_key_is_nowhere_the_run_wrote(signed_run):
    key_file = signed_run["key"]
    pem = key_file.read_bytes()
    priv = keys.load_private(key_file)
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    scalar = priv.private_numbers().private_value
    body = b"".join(pem.splitlines()[1:-1])
    needles = {"pem": pem, "pem body": body[:40], "der": der, "scalar hex": f"{scalar:064x}".encode(),
               "scalar": str(scalar).encode(), "scalar bytes": scalar.to_bytes(32, "big")}
    tmp = signed_run["tmp"]
    from prefect.settings import get_current_settings

    roots = [tmp / "art", tmp / "data", tmp / "wandb", tmp / "lineage.db"]
    url = get_current_settings().server.database.connection_url
    prefect_db = Path(url.get_secret_value().split("///", 1)[1]) if url and "sqlite" in url.get_secret_value() \
        else None
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    files += [p for p in prefect_db.parent.glob(prefect_db.name + "*")] if prefect_db else []
    assert len(files) > 20 and any(p.name == "model.onnx.sig" for p in files)
    for f in files:
        blob = f.read_bytes()
        for what, needle in needles.items():
            assert needle not in blob, f"the private key ({what}) is in {f}"
    logs = "\n".join(signed_run["logs"]).encode()
    assert b"signed convnet-onnx:v0" in logs, logs[-2000:]  # the sign stage's own line is here
    for what, needle in needles.items():
        assert needle not in logs, f"the private key ({what}) is in the logs"


def test_the_sweeps_winner_is_signed_the_same_way(prefect_server, wandb_offline, tiny_mnist, tmp_path, monkeypatch,
                                                  capsys):
    from typing import Any, cast

    from mnist_pipeline.flows.sweep import mnist_sweep, task_runner
    from mnist_pipeline.sweep import parse_sweep

    key, pub = keys.generate(tmp_path / "keys")
    monkeypatch.setenv(SIGN_KEY_ENV, str(key))  # the deployments' way: the key from the environment
    cfg = tiny_config(tmp_path, tiny_mnist)
    sweep = {"method": "grid", "metric": {"name": "test_accuracy", "goal": "maximize"},
             "parameters": {"train.learning_rate": {"values": [0.005, 0.01]}}}
    summary = mnist_sweep.with_options(task_runner=cast(Any, task_runner(None, 1)))(config=cfg, sweep=parse_sweep(sweep))
    winner = summary.to_dict()["winner"]
    store = LineageStore(tmp_path / "lineage.db")
    [sign_run] = [r for r in store.runs() if r.job_type == "sign"]
    used = {u.type: u for u in store.edges(sign_run.run_id).used}
    assert f"{used['onnx'].name}:v{used['onnx'].version}" == winner["onnx"]
    assert f"{used['model'].name}:v{used['model'].version}" == winner["model"]
    onnx_file = Path(winner["onnx_file"])
    assert sign_main(["verify", str(onnx_file), "--public-key", str(pub)]) == 0
    assert sign_main(["verify", str(Path(winner["attestation_path"]) / "model.onnx"), "--public-key", str(pub)]) == 0
    assert "├─ dataset" in capsys.readouterr().out


def test_an_unusable_key_fails_the_run_before_any_stage(prefect_server, wandb_offline, tiny_mnist, tmp_path):
    (tmp_path / "junk.key").write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    cfg = PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": str(tiny_mnist), "slice": 1, "root": str(tmp_path / "data")},
        "train": {"epochs": 1}, "wandb": {"mode": "offline"}, "sign": {"private_key": str(tmp_path / "junk.key")},
        "artifacts_dir": str(tmp_path / "art"), "lineage_db": str(tmp_path / "lineage.db")})
    state = mnist_lineage_pipeline(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(keys.KeyFileError, match="junk.key: not an unencrypted PEM private key"):
        state.result()
    assert not (tmp_path / "lineage.db").exists() or not LineageStore(tmp_path / "lineage.db").runs()
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").iterdir())
