"""Write an attestation folder: the ONNX file's copy, its model-signing bundle, the DSSE-signed Statement and an
index naming them (`verify` finds all of it beside the copy). The private key is read here and nowhere written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect_wandb.provenance import bundle, dsse, keys, statement
from prefect_wandb.provenance.verify import INDEX, bundle_name, envelope_name, sha256_file

__all__ = ["SIGNER_PUB", "write"]

SIGNER_PUB = "signer.pub"


def write(onnx_file: Path, private_key: Path, out: Path, inputs: statement.ProvenanceInputs,
          onnx_artifact: dict, *, command: str = "prefect-wandb", public_key_name: str = "signing.pub") -> dict:
    """Sign `onnx_file` into the empty folder `out`; returns the index (also written as `attestation.json`).

    `onnx_artifact`: {"name", "digest"} of the ONNX file's artifact, by which `verify` finds this attestation
    from the file's own (immutable) artifact folder. `command` and `public_key_name` word the index's hints on how
    to verify it (`<command> verify FILE --public-key <public_key_name>`)."""
    key = keys.load_private(private_key)
    fp = keys.fingerprint(key.public_key())
    name = inputs.subject_name
    if sha256_file(onnx_file) != inputs.subject_sha256:
        raise ValueError(f"{onnx_file}: its sha256 is not the subject digest the Statement was built for")
    out = Path(out)
    copy = out / name
    shutil.copyfile(onnx_file, copy)
    if sha256_file(copy) != inputs.subject_sha256:  # what is signed is the copy: it must be the same bytes
        raise OSError(f"the copy of {onnx_file} in {out} differs from it")
    bundle.sign(copy, private_key, out / bundle_name(name))
    envelope = dsse.sign(statement.to_bytes(statement.build(inputs)), key)
    (out / envelope_name(name)).write_text(json.dumps(envelope, indent=1) + "\n")
    # the signer's public key, for checks of the folder's own consistency (the audit): trust comes from the key a
    # verifier already holds (`verify --public-key`), never from this copy
    (out / SIGNER_PUB).write_bytes(keys.public_pem(key.public_key()))
    index = {"subject": {"name": name, "sha256": inputs.subject_sha256}, "public_key_fingerprint": fp,
             "bundle": bundle_name(name), "envelope": envelope_name(name), "signer_public_key": SIGNER_PUB,
             "onnx_artifact": dict(onnx_artifact),
             "payload_type": dsse.IN_TOTO, "predicate_type": statement.SLSA_PROVENANCE,
             "verify": f"{command} verify {name} --public-key {public_key_name}",
             "verify_bundle": f"model_signing verify key {name} --signature {bundle_name(name)} "
                              f"--public_key {public_key_name}"}
    (out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
