"""Signing pieces without a flow: keygen, DSSE (PAE per the spec), the model-signing bundle, the ONNX file's
provenance pointers and input contract; DSSE envelopes and Statements stay those of the hand-written code that
securesystemslib and in-toto-attestation replaced (a frozen copy of it below)."""

import base64
import binascii
import dataclasses
import hashlib
import json
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import onnx
import pytest
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mnist_pipeline import onnx_io, stage_files
from mnist_pipeline.cli.main import main
from mnist_pipeline.model import ConvNet, ModelConfig, save_model
from prefect_wandb.provenance import attest, dsse, keys, statement
from prefect_wandb.provenance.verify import sha256_file, tree, verify

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def test_keygen_writes_a_p256_pair_private_0600_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--out", str(out)]) == 0
    key, pub = out / "mnist-signing.key", out / "mnist-signing.pub"  # `mnist-pipeline keygen` names them
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


# ---- FROZEN REFERENCE IMPLEMENTATION of the old format: do not edit, do not import from the package. -------------
# The hand-written DSSE code of prefect_wandb/provenance/dsse.py and the Statement builder of statement.py as of
# commit 796abb5, before securesystemslib and in-toto-attestation replaced them; copied verbatim but for the names
# (_old_*), the fingerprint and the constants, inlined (statement.Resource is only the inputs' container). The tests
# below hold the new code to what these wrote and accepted.

def _old_fingerprint(key):
    return hashlib.sha256(key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _old_pae(payload_type, payload):
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _old_hash_for(curve):
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def _old_sign(payload, key, payload_type=dsse.IN_TOTO):
    sig = key.sign(_old_pae(payload_type, payload), ec.ECDSA(_old_hash_for(key.curve)))
    return {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
            "signatures": [{"keyid": _old_fingerprint(key.public_key()), "sig": base64.b64encode(sig).decode()}]}


def _old_verify(envelope, key, payload_type=dsse.IN_TOTO):
    EnvelopeError = dsse.EnvelopeError  # the exception class is the package's, so messages compare  # noqa: N806
    try:
        if envelope["payloadType"] != payload_type:
            raise EnvelopeError(f"payloadType is {envelope['payloadType']!r}, expected {payload_type!r}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [(s.get("keyid", ""), base64.b64decode(s["sig"], validate=True)) for s in envelope["signatures"]]
    except (KeyError, TypeError, binascii.Error, AttributeError) as e:
        raise EnvelopeError(f"not a DSSE envelope ({type(e).__name__}: {e})") from None
    if not sigs:
        raise EnvelopeError("the envelope holds no signature")
    message, algo = _old_pae(payload_type, payload), ec.ECDSA(_old_hash_for(key.curve))
    for _, sig in sigs:
        try:
            key.verify(sig, message, algo)
            return payload
        except InvalidSignature:
            continue
    mine = _old_fingerprint(key)
    ids = sorted({k for k, _ in sigs if k})
    if ids and mine not in ids:
        raise EnvelopeError(f"signed by key {', '.join(i[:16] for i in ids)}, not by the given key {mine[:16]}")
    raise EnvelopeError("the signature does not match the payload: the Statement was changed after signing")


def _old_resource(r, role):
    if not r.digest and not r.uri:
        raise ValueError(f"resource {r.name!r} has neither a digest nor a uri")
    out = {"name": r.name}
    if r.uri:
        out["uri"] = r.uri
    if r.digest:
        out["digest"] = dict(r.digest)
    out["annotations"] = {"role": role, **r.annotations}
    return out


def _old_time(t):
    if t.tzinfo is None:
        raise ValueError("provenance times must be timezone-aware")
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _old_build(p):
    if len(p.subject_sha256) != 64:
        raise ValueError(f"subject sha256 {p.subject_sha256!r} is not a sha256 hex digest")
    deps = [_old_resource(p.dataset, "dataset"), *(_old_resource(r, "raw-file") for r in p.raw_files),
            _old_resource(p.model_file, "model"), _old_resource(p.code, "code")]
    deps += [_old_resource(statement.Resource(name=n, uri=f"pkg:pypi/{n}@{v}", annotations={"version": v}), "package")
             for n, v in sorted(p.packages.items()) if v]
    metadata = {"startedOn": _old_time(p.started_on), "finishedOn": _old_time(p.finished_on)}
    if p.invocation_id:
        metadata["invocationId"] = p.invocation_id
    builder = {"id": p.builder_id}
    if p.builder_version:
        builder["version"] = dict(p.builder_version)
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": p.subject_name, "digest": {"sha256": p.subject_sha256}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {"buildType": "https://mnist-lineage-pipeline.dev/build/onnx-export/v1",
                                "externalParameters": p.external_parameters,
                                "internalParameters": p.internal_parameters, "resolvedDependencies": deps},
            "runDetails": {"builder": builder, "metadata": metadata,
                           "byproducts": [_old_resource(b, "byproduct") for b in p.byproducts]},
        },
    }


def _old_to_bytes(st):
    return json.dumps(st, sort_keys=True, indent=1).encode("utf-8")
# ---- end of the frozen reference ---------------------------------------------------------------------------------


def _statement_inputs() -> statement.ProvenanceInputs:
    """Inputs that a protobuf Struct would change: ints (5 is not 5.0), integral floats (30.0 is not 30), an int past
    2**53, None, non-ASCII, nested lists."""
    t = datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)
    R = statement.Resource  # noqa: N806
    return statement.ProvenanceInputs(
        subject_name="model.onnx", subject_sha256="a" * 64,
        external_parameters={"config": {"train": {"epochs": 5, "learning_rate": 0.005, "kernels": [8, 16]},
                                        "data": {"timeout": 30.0, "slice": None}, "note": "café"}},
        internal_parameters={"seed": 2**62 + 1, "threads": 1, "device": "cpu"},
        dataset=R("mnist:v0", {"sha256": "d" * 64}, uri="file:///runs/dataset",
                  annotations={"sizes": {"train": 600, "val": 100}, "slice": None, "files": {"a": "b"}}),
        raw_files=[R("train-images-idx3-ubyte", {"sha256": "r" * 64}, annotations={"size": 9912422, "md5": "m"})],
        model_file=R("model.pt", {"sha256": "f" * 64}, annotations={"artifact": "convnet:v0"}),
        code=R("mnist-lineage-pipeline", {"gitCommit": "c" * 40}, uri="pkg:pypi/x@1", annotations={"dirty": False}),
        packages={"torch": "2.14.0", "absent": None, "numpy": "2.4.1"}, builder_id="urn:test", invocation_id="flow-1",
        started_on=t, finished_on=t, builder_version={"mnist-lineage-pipeline": "0.1.0"},
        byproducts=[R("validation.json", {"sha256": "v" * 64}, annotations={"accuracy": 1.0, "n": 3})],
        build_type="https://mnist-lineage-pipeline.dev/build/onnx-export/v1")  # the frozen code's one build type


def test_the_statement_is_byte_for_byte_the_hand_built_one_and_each_parser_reads_the_other():
    inputs = _statement_inputs()
    new, old = statement.build(inputs), _old_build(inputs)
    assert statement.to_bytes(new) == _old_to_bytes(old)
    assert json.dumps(new) == json.dumps(old)  # the same fields in the same order, unsorted too
    assert statement.parse(_old_to_bytes(old)) == old
    assert "5.0" not in statement.to_bytes(new).decode() and '"seed": 4611686018427387905' in \
        statement.to_bytes(new).decode()
    bad = {**old, "subject": [old["subject"][0], {"name": "x"}]}  # in-toto-attestation: every subject has a digest
    with pytest.raises(ValueError, match="not a valid in-toto Statement.*At least one digest required"):
        statement.parse(_old_to_bytes(bad))
    with pytest.raises(ValueError, match="names no subject with a sha256 digest"):
        statement.parse(_old_to_bytes({**old, "subject": ["model.onnx"]}))  # one line, not an AttributeError
    with pytest.raises(ValueError, match="not a valid in-toto Statement"):  # a one-line refusal, not an OverflowError
        statement.parse(_old_to_bytes({**old, "predicate": {**old["predicate"], "n": 10**400}}))


@pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1, ec.SECP521R1])
def test_envelopes_of_the_old_and_the_new_code_verify_with_each_other(curve):
    key = ec.generate_private_key(curve())
    payload = statement.to_bytes(statement.build(_statement_inputs()))
    new, old = dsse.sign(payload, key), _old_sign(payload, key)
    assert dsse.verify(old, key.public_key()) == payload
    assert _old_verify(new, key.public_key()) == payload
    # as written to model.onnx.intoto.json: the same bytes but for the signature (ECDSA signatures are randomised)
    swapped = {**new, "signatures": [{**new["signatures"][0], "sig": old["signatures"][0]["sig"]}]}
    assert json.dumps(swapped, indent=1) == json.dumps(old, indent=1)
    assert new["signatures"][0]["keyid"] == keys.fingerprint(key.public_key())
    for env in (json.loads(json.dumps(new, indent=1)), json.loads(json.dumps(old, indent=1))):
        assert dsse.verify(env, key.public_key()) == _old_verify(env, key.public_key()) == payload


def test_tampered_envelopes_are_refused_by_both_with_the_same_messages():
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    payload = b'{"x": 1}'
    for sign in (dsse.sign, _old_sign):
        env = sign(payload, k1)
        raw = bytearray(payload)
        raw[2] ^= 0x01  # one byte of the payload flipped
        cases = {"changed after signing": {**env, "payload": base64.b64encode(bytes(raw)).decode()},
                 "not by the given key": sign(payload, k2),
                 "payloadType": {**env, "payloadType": "text/plain"},
                 "holds no signature": {**env, "signatures": []},
                 r"not a DSSE envelope \(KeyError: 'signatures'\)": {"payload": env["payload"],
                                                                     "payloadType": env["payloadType"]},
                 r"not a DSSE envelope \(Error: Only base64": {**env, "payload": "not base64!"}}
        for expected, bad in cases.items():
            messages = []
            for verify_ in (dsse.verify, _old_verify):
                with pytest.raises(dsse.EnvelopeError, match=expected) as e:
                    verify_(bad, k1.public_key())
                messages.append(str(e.value))
            assert messages[0] == messages[1] and "\n" not in messages[0]
        assert dsse.verify(env, k1.public_key()) == payload  # verify left the envelope it was given as it was


def test_what_securesystemslib_refuses_that_the_old_code_took():
    """Envelopes this tool never wrote: a signature whose keyid is not the key's fingerprint (securesystemslib tries
    only the signatures that name the given key), without a keyid, or two under one keyid. Refused, one line."""
    key = ec.generate_private_key(ec.SECP256R1())
    env = dsse.sign(b"{}", key)
    sig = env["signatures"][0]
    for sigs, expected in (([{"keyid": "b" * 64, "sig": sig["sig"]}], "signed by key bbbbbbbbbbbbbbbb, not by"),
                           ([{"sig": sig["sig"]}], r"not a DSSE envelope \(KeyError: 'keyid'\)"),
                           ([dict(sig), dict(sig)], "Multiple signatures found for keyid")):
        assert _old_verify({**env, "signatures": sigs}, key.public_key()) == b"{}"
        with pytest.raises(dsse.EnvelopeError, match=expected):
            dsse.verify({**env, "signatures": sigs}, key.public_key())


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
    envelope = json.loads((att / "model.onnx.intoto.json").read_text())  # and with the hand-written verifier of old
    assert json.loads(_old_verify(envelope, keys.load_public(pub))) == r.statement
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


def _recorded(folder: Path, artifact_id: int, name: str, type_: str, metadata: dict | None = None):
    """A version as the store records it, of the files in `folder` (`prefect_wandb.ArtifactRecord`)."""
    from prefect_wandb import ArtifactRecord
    from prefect_wandb.records import FileRecord

    files = tuple(FileRecord(p.name, sha256_file(p), p.stat().st_size) for p in sorted(folder.iterdir()))
    return ArtifactRecord(artifact_id, name, type_, 0, f"{artifact_id}" * 64, str(folder), metadata or {},
                          f"run-{type_}", "2026-01-01T00:00:00+00:00", files)


def test_an_attestation_is_built_from_the_sign_stage_s_records_and_verifies(tmp_path):
    """`attest.Attestation.of` the records of the ONNX file, its model, dataset and validation (what both pipelines'
    sign stages use): each a resolved dependency at `<scheme>:<type>/<name>@sha256:<digest>`, the code and packages
    of the run that exported the file, started when the model's run did; refused for a failed validation, or one of
    another file; `write` signs the recorded file into a folder that verifies."""
    from types import SimpleNamespace

    for name, files in {"onnx": {"model.onnx": b"onnx bytes"}, "model": {"model.json": b"{}"},
                        "dataset": {"train.npy": b"rows"}, "validation": {"validation.json": b"{}"}}.items():
        (tmp_path / name).mkdir()
        for f, data in files.items():
            (tmp_path / name / f).write_bytes(data)
    onnx_rec = _recorded(tmp_path / "onnx", 1, "net-onnx", "onnx")
    model = _recorded(tmp_path / "model", 2, "net", "model")
    dataset = _recorded(tmp_path / "dataset", 3, "d", "dataset")
    passed = {"passed": True, "inputs": [{"type": "onnx", "digest": onnx_rec.digest}]}
    validation = _recorded(tmp_path / "validation", 4, "net-onnx-validation", "validation", passed)
    env = {"git_commit": "c" * 40, "git_dirty": False, "packages": {"numpy": "2.4.1", "absent": None}}
    runs = {"run-onnx": SimpleNamespace(env=env, started_at="2026-01-01T10:00:00+00:00"),
            "run-model": SimpleNamespace(env={}, started_at="2026-01-01T09:00:00.250+00:00")}
    stage = SimpleNamespace(store=SimpleNamespace(run=runs.get), flow_run_id="flow-1", config={"alpha": 0.5})

    def of(*records, **kw):
        return attest.Attestation.of(stage, *records, scheme="my-lineage", code="mine", model_file="model.json",
                                     internal_parameters={"seed": 3}, **kw)

    p = of(onnx_rec, model, dataset, validation).inputs
    assert (p.subject_name, p.subject_sha256) == ("model.onnx", onnx_rec.sha256("model.onnx"))
    assert p.external_parameters == {"config": {"alpha": 0.5}} and p.internal_parameters == {"seed": 3}
    assert p.dataset == statement.Resource("d:v0", {"sha256": dataset.digest},
                                           f"my-lineage:dataset/d@sha256:{dataset.digest}", {"artifact": "d:v0"})
    assert p.model_file == statement.Resource("model.json", {"sha256": model.sha256("model.json")},
                                              f"my-lineage:model/net@sha256:{model.digest}", {"artifact": "net:v0"})
    assert p.code == statement.Resource("mine", {"gitCommit": "c" * 40}, "urn:prefect-wandb:mine", {"dirty": False})
    assert (p.builder_id, p.builder_version, p.build_type) == ("urn:prefect-wandb:mine", {}, statement.BUILD_TYPE)
    assert p.packages == env["packages"] and p.raw_files == [] and p.invocation_id == "flow-1"
    assert p.started_on == datetime(2026, 1, 1, 9, 0, 0, 250000, tzinfo=timezone.utc) <= p.finished_on
    [v] = p.byproducts
    assert (v.name, v.digest, v.annotations) == ("validation.json", {"sha256": validation.sha256("validation.json")},
                                                 {"artifact": "net-onnx-validation:v0"})
    # what a pipeline adds: its annotations, builder, start (a naive time is UTC)
    p = of(onnx_rec, model, dataset, validation, dataset_annotations={"source": "x"}, builder_id="urn:b",
           validation_annotations={"passed": True}, started_on=datetime(2026, 2, 1)).inputs
    assert (p.dataset.annotations, p.byproducts[0].annotations) == ({"source": "x"}, {"passed": True})
    assert (p.builder_id, p.code.uri, p.started_on) == ("urn:b", "urn:prefect-wandb:mine",
                                                        datetime(2026, 2, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError, match="net-onnx-validation:v0 failed: an ONNX file that did not validate"):
        of(onnx_rec, model, dataset, dataclasses.replace(validation, metadata={**passed, "passed": False}))
    with pytest.raises(ValueError, match="net-onnx-validation:v0 is not the validation of net:v0"):
        of(model, model, dataset, validation)

    key, pub = keys.generate(tmp_path / "keys")
    (tmp_path / "att").mkdir()
    index = of(onnx_rec, model, dataset, validation).write(key, tmp_path / "att")
    assert index["onnx_artifact"] == {"name": "net-onnx", "digest": onnx_rec.digest}
    assert index["verify"] == "prefect-wandb verify model.onnx --public-key signing.pub"
    r = verify(tmp_path / "onnx" / "model.onnx", pub, attestation=tmp_path / "att")
    assert r.status == "verified", r.checks
    assert statement.dependencies(r.statement, "model")[0]["uri"] == f"my-lineage:model/net@sha256:{model.digest}"


def test_verify_usage_and_missing_attestation(tmp_path, capsys):
    out = _export(tmp_path, POINTERS)
    pub = keys.generate(tmp_path / "keys")[1]
    assert main(["verify", str(out / "model.onnx"), "--public-key", str(pub)]) == 4
    assert "no attestation for model.onnx" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope.onnx"), "--public-key", str(pub)]) == 2
    assert capsys.readouterr().err.strip().endswith("nope.onnx: no such file")
    assert main(["verify", str(out), "--public-key", str(pub)]) == 2  # a folder is not "no such file"
    assert capsys.readouterr().err.strip().endswith(f"{out} is a folder: verify checks one signed file "
                                                    f"(give {out / 'model.onnx'})")
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
    pub = tmp_path / "k" / "signing.pub"  # a public key where the private one belongs
    with pytest.raises(keys.KeyFileError, match="signing.pub: a public key, not the private key to sign with"):
        check_key(PipelineConfig.model_validate({"sign": {"private_key": str(pub)}}))
    key.chmod(0o644)  # readable by all: refused, as ssh refuses it
    with pytest.raises(keys.KeyFileError, match=r"signing.key: permissions 0644 are too open .* `chmod 600 "):
        check_key(PipelineConfig())


def _bad_keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a key file no run may sign with, the words that say why)."""
    def private(name: str, mode: int, encryption=None, fmt=serialization.PrivateFormat.PKCS8) -> Path:
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())
        path = tmp_path / name
        path.write_bytes(pem)
        path.chmod(mode)
        return path

    good, pub = keys.generate(tmp_path / "pair")
    folder = tmp_path / "a-folder.key"
    folder.mkdir()
    return {
        "world-readable": (private("open.key", 0o644), "permissions 0644 are too open for a private key"),
        "group-readable": (private("group.key", 0o640), "permissions 0640 are too open for a private key"),
        "missing": (tmp_path / "missing.key", "cannot read signing key"),
        "unreadable": (folder, "cannot read signing key"),
        "public": (pub, "a public key, not the private key to sign with"),
        "encrypted": (private("enc.key", 0o600, serialization.BestAvailableEncryption(b"pw")),
                      "an encrypted private key; signing runs unattended and takes no passphrase"),
        "encrypted-traditional": (private("enc-trad.key", 0o600, serialization.BestAvailableEncryption(b"pw"),
                                          serialization.PrivateFormat.TraditionalOpenSSL),
                                  "an encrypted private key"),
    }


@pytest.mark.parametrize("case", ["world-readable", "group-readable", "missing", "unreadable", "public", "encrypted",
                                  "encrypted-traditional"])
def test_run_with_an_unusable_signing_key_is_one_line_and_exit_2_before_prefect_starts(tmp_path, monkeypatch,
                                                                                        capsys, case):
    from mnist_pipeline.cli import main as cli_main
    from mnist_pipeline.config import SIGN_KEY_ENV

    monkeypatch.delenv(SIGN_KEY_ENV, raising=False)

    def no_prefect():
        raise AssertionError("Prefect was set up before the key was checked")

    monkeypatch.setattr(cli_main, "prefect_defaults", no_prefect)
    key, words = _bad_keys(tmp_path)[case]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"sign": {"private_key": str(key)}, "lineage_db": str(tmp_path / "l.db"),
                               "artifacts_dir": str(tmp_path / "art"), "data": {"root": str(tmp_path / "data")}}))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-pipeline: cannot sign with this key: ") and words in err, err
    assert str(key) in err and "Traceback" not in err
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "art").exists()  # no work was done
    # a sweep signs its winner with it: refused the same way, before any trial
    sweep = Path(__file__).resolve().parents[1] / "examples" / "sweep.yaml"
    assert main(["sweep", "--sweep", str(sweep), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-pipeline: cannot sign with this key: ") and words in err
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "art").exists()
    # the same key from the environment (a worker's own setting) is held to the same check
    monkeypatch.setenv(SIGN_KEY_ENV, str(key))
    cfg.write_text(json.dumps({"lineage_db": str(tmp_path / "l.db"), "artifacts_dir": str(tmp_path / "art"),
                               "data": {"root": str(tmp_path / "data")}}))
    assert main(["run", "--config", str(cfg)]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.slow  # a process of its own: what the shell sees, and nothing written, Prefect's home included
def test_a_world_readable_key_stops_the_command_before_prefect_is_imported(tmp_path):
    from tests.helpers import REPO, offline_run_env, run_argv

    key, words = _bad_keys(tmp_path)["world-readable"]
    proc = subprocess.run(run_argv(tmp_path, "--source", "synthetic", "--sign-key", str(key)), cwd=REPO,
                          env=offline_run_env(tmp_path, api=False), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"mnist-pipeline: cannot sign with this key: {key}: {words} (group or others may "
                                   f"access it): `chmod 600 {key}`")
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "home" / ".prefect").exists()


def test_verify_says_a_failed_bundle_in_words_and_a_signer_pub_that_is_another_key(tmp_path, capsys):
    out = _export(tmp_path, POINTERS)
    key, pub = keys.generate(tmp_path / "keys")
    att = tmp_path / "att"
    att.mkdir()
    attest.write(out / "model.onnx", key, att, _inputs(out / "model.onnx"),
                 onnx_artifact={"name": "convnet-onnx", "digest": "e" * 64})
    signed = sha256_file(att / "model.onnx")
    # the folder's signer.pub is the signing key: nothing to say
    assert main(["verify", str(att / "model.onnx"), "--public-key", str(pub)]) == 0
    assert "warning" not in capsys.readouterr().err
    # another key given: both signatures fail, and the folder's own key, which is not the one given, is said
    other = keys.generate(tmp_path / "other")[1]
    assert main(["verify", str(att / "model.onnx"), "--public-key", str(other)]) == 3
    err = capsys.readouterr().err.splitlines()
    fp = keys.fingerprint(keys.load_public(pub))[:16]
    assert err[0] == (f"mnist-pipeline verify: warning: {att / 'signer.pub'} in the attestation folder is key {fp}, "
                      f"not the --public-key given (key {keys.fingerprint(keys.load_public(other))[:16]}); it was "
                      "not used: trust comes from --public-key")
    assert [line.split(":")[1] for line in err[1:]] == [" FAILED statement signature", " FAILED model-signing bundle"]
    # a changed file: the bundle's failure in words (two digests), not model-signing's Python reprs of bytes
    blob = bytearray((att / "model.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (att / "model.onnx").write_bytes(bytes(blob))
    assert main(["verify", str(att / "model.onnx"), "--public-key", str(pub)]) == 3
    err = capsys.readouterr().err
    now = sha256_file(att / "model.onnx")
    assert (f"FAILED model-signing bundle: model.onnx.sig does not verify {att / 'model.onnx'}: the file's sha256 "
            f"{now[:16]}... is not the {signed[:16]}... the bundle signed (the file changed)") in err, err
    assert "digest_value" not in err and "\\x" not in err and "b'" not in err and "warning" not in err
