"""Signing pieces without a flow: keygen, DSSE (PAE per the spec), the model-signing bundle, the ONNX file's
provenance pointers and input contract."""

import base64
import json
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import onnx
import pytest
import torch

from mnist_pipeline import onnx_io, stage_files
from mnist_pipeline.flows.sign_cli import main
from mnist_pipeline.model import ConvNet, ModelConfig, save_model
from prefect_wandb.provenance import attest, dsse, keys, statement
from prefect_wandb.provenance.verify import sha256_file, tree, verify

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def test_keygen_writes_a_p256_pair_private_0600_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--out", str(out)]) == 0
    key, pub = out / keys.PRIVATE_NAME, out / keys.PUBLIC_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    priv = keys.load_private(key)
    assert priv.curve.name == "secp256r1"
    assert keys.public_pem(priv.public_key()) == pub.read_bytes()
    assert keys.fingerprint(priv.public_key()) in capsys.readouterr().out
    before = key.read_bytes(), pub.read_bytes()
    assert main(["keygen", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (key.read_bytes(), pub.read_bytes()) == before
    pub.unlink()  # one of the two present is enough to refuse: the pair must stay a pair
    assert main(["keygen", "--out", str(out)]) == 2
    assert key.read_bytes() == before[0] and not pub.exists()


def test_pae_is_the_dsse_spec_encoding():
    # the DSSE protocol's own example: PAE("http://example.com/HelloWorld", "hello world")
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"  # byte lengths, not characters


def test_dsse_round_trip_and_what_breaks_it(tmp_path):
    k1, k2 = keys.load_private(keys.generate(tmp_path / "a")[0]), keys.load_private(keys.generate(tmp_path / "b")[0])
    env = dsse.sign(b'{"x": 1}', k1)
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert env["signatures"][0]["keyid"] == keys.fingerprint(k1.public_key())
    assert dsse.verify(env, k1.public_key()) == b'{"x": 1}'
    with pytest.raises(dsse.EnvelopeError, match="not by the given key"):
        dsse.verify(env, k2.public_key())
    edited = {**env, "payload": base64.b64encode(b'{"x": 2}').decode()}
    with pytest.raises(dsse.EnvelopeError, match="changed after signing"):
        dsse.verify(edited, k1.public_key())
    with pytest.raises(dsse.EnvelopeError, match="payloadType"):
        dsse.verify({**env, "payloadType": "text/plain"}, k1.public_key())


def _export(tmp_path: Path, provenance: dict | None) -> Path:
    torch.manual_seed(0)
    save_model(ConvNet(ModelConfig(kernels=(4, 8))), tmp_path / "model.pt")
    out = tmp_path / "onnx"
    out.mkdir()
    stage_files.export_onnx_files(tmp_path / "model.pt", out, opset=18, exporter="torchscript", provenance=provenance)
    return out


POINTERS = {"train_run_id": "run123", "train_flow_run_id": "flow-1", "model_artifact": "convnet", "model_digest": "m" * 64,
            "model_file_sha256": "f" * 64, "dataset_digest": "d" * 64, "git_commit": "c" * 40, "git_dirty": "false"}


def test_onnx_metadata_props_carry_provenance_and_the_input_contract(tmp_path):
    out = _export(tmp_path, POINTERS)
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    for k, v in POINTERS.items():
        assert props[f"mnist_pipeline.{k}"] == v
    contract = json.loads(props["mnist_pipeline.input_contract"])
    # what data.to_float feeds the model everywhere: uint8 / 255, NCHW, no normalisation, dynamic batch
    assert contract["input_name"] == "images" and contract["shape"] == ["batch", 1, 28, 28]
    assert contract["dtype"] == "float32" and contract["normalization"] is None and "255" in contract["scaling"]
    assert onnx_io.read_metadata(out / "model.onnx")["dataset_digest"] == "d" * 64
    export = json.loads((out / "export.json").read_text())
    assert export["input_contract"] == contract and export["provenance"] == POINTERS
    sess = onnx_io.session(out / "model.onnx")
    [inp] = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(float)", [1, 28, 28])  # the contract is true
    # the same inputs give the same bytes (a reproduction passes the recorded pointers)
    (tmp_path / "again").mkdir()
    again = _export(tmp_path / "again", POINTERS)
    assert sha256_file(again / "model.onnx") == sha256_file(out / "model.onnx")


def _inputs(onnx_file: Path) -> statement.ProvenanceInputs:
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return statement.ProvenanceInputs(
        subject_name="model.onnx", subject_sha256=sha256_file(onnx_file), external_parameters={"config": {}},
        internal_parameters={"seed": 0, "threads": 1, "device": "cpu"},
        dataset=statement.Resource("mnist:v0", {"sha256": "d" * 64}), raw_files=[statement.Resource(
            "train-images-idx3-ubyte", {"sha256": "r" * 64})], model_file=statement.Resource("model.pt", {"sha256": "f" * 64}),
        code=statement.Resource("code", {"gitCommit": "c" * 40}, annotations={"dirty": False}),
        packages={"torch": "2.14.0", "absent": None}, builder_id="urn:test", invocation_id="flow-1",
        started_on=t, finished_on=t)


@pytest.mark.slow
def test_attestation_folder_verifies_here_and_with_the_model_signing_cli(tmp_path):
    out = _export(tmp_path, POINTERS)
    key, pub = keys.generate(tmp_path / "keys")
    att = tmp_path / "att"
    att.mkdir()
    index = attest.write(out / "model.onnx", key, att, _inputs(out / "model.onnx"),
                         onnx_artifact={"name": "convnet-onnx", "digest": "e" * 64})
    assert sorted(p.name for p in att.iterdir()) == ["attestation.json", "model.onnx", "model.onnx.intoto.json",
                                                     "model.onnx.sig", "signer.pub"]
    assert (att / "signer.pub").read_bytes() == pub.read_bytes()
    r = verify(att / "model.onnx", pub)
    assert r.status == "verified", r.checks
    assert r.key_fingerprint == index["public_key_fingerprint"]
    st = r.statement
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    roles = [d["annotations"]["role"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]]
    assert roles == ["dataset", "raw-file", "model", "code", "package"]  # a package without a version is left out
    assert any("raw  train-images-idx3-ubyte" in line for line in tree(st))
    run = subprocess.run([str(MODEL_SIGNING), "verify", "key", str(att / "model.onnx"), "--signature",
                          str(att / "model.onnx.sig"), "--public_key", str(pub)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    other = keys.generate(tmp_path / "other")[1]
    run = subprocess.run([str(MODEL_SIGNING), "verify", "key", str(att / "model.onnx"), "--signature",
                          str(att / "model.onnx.sig"), "--public_key", str(other)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0


def test_verify_usage_and_missing_attestation(tmp_path, capsys):
    out = _export(tmp_path, POINTERS)
    pub = keys.generate(tmp_path / "keys")[1]
    assert main(["verify", str(out / "model.onnx"), "--public-key", str(pub)]) == 4
    assert "no attestation for model.onnx" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope.onnx"), "--public-key", str(pub)]) == 2
    assert main(["verify", str(out / "model.onnx"), "--public-key", str(out / "export.json")]) == 2
    assert "not a PEM public key" in capsys.readouterr().err
    assert main(["verify", str(out / "model.onnx")]) == 2  # --public-key is required


def test_the_signing_key_comes_from_the_config_else_the_environment_and_a_bad_one_fails_first(tmp_path, monkeypatch):
    from mnist_pipeline.config import SIGN_KEY_ENV, PipelineConfig
    from mnist_pipeline.tasks.sign import check_key

    key = keys.generate(tmp_path / "k")[0]
    monkeypatch.delenv(SIGN_KEY_ENV, raising=False)
    assert check_key(PipelineConfig()) is None  # no key: the run is not signed
    monkeypatch.setenv(SIGN_KEY_ENV, str(key))
    assert check_key(PipelineConfig()) == key.resolve()
    other = keys.generate(tmp_path / "o")[0]
    given = PipelineConfig.model_validate({"sign": {"private_key": str(other)}}).resolved()
    assert check_key(given) == other.resolve()  # the config wins over the environment
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(keys.KeyFileError, match=r"junk.key: not an unencrypted PEM private key"):
        check_key(PipelineConfig.model_validate({"sign": {"private_key": str(tmp_path / "junk.key")}}))
    with pytest.raises(keys.KeyFileError, match="cannot read signing key"):
        check_key(PipelineConfig.model_validate({"sign": {"private_key": str(tmp_path / "missing.key")}}))
    pub = tmp_path / "k" / keys.PUBLIC_NAME  # a public key where the private one belongs
    with pytest.raises(keys.KeyFileError, match="not an unencrypted PEM private key"):
        check_key(PipelineConfig.model_validate({"sign": {"private_key": str(pub)}}))
