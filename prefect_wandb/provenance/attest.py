"""Write an attestation folder: the ONNX file's copy, its model-signing bundle, the DSSE-signed Statement and an
index naming them (`verify` finds all of it beside the copy). The private key is read here and nowhere written.

A sign stage builds what it signs from its records with `Attestation.of` (the ONNX file, the model it was exported
from, the dataset, the validation that passed it), then `Attestation.write`s the folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_wandb.artifact_files import local_folder
from prefect_wandb.provenance import bundle, dsse, keys, statement
from prefect_wandb.provenance.verify import INDEX, bundle_name, envelope_name, sha256_file

if TYPE_CHECKING:
    from prefect_wandb.records import ArtifactRecord
    from prefect_wandb.stage import Stage

__all__ = ["SIGNER_PUB", "Attestation", "write"]

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


def _resource(rec: ArtifactRecord, scheme: str, file: str | None = None,
              annotations: Mapping[str, Any] | None = None) -> statement.Resource:
    """One file of a recorded version (else the version itself, by its digest), at its uri
    `<scheme>:<type>/<name>@sha256:<digest>`; annotated with its label unless `annotations` are given."""
    return statement.Resource(name=file or rec.label, digest={"sha256": rec.sha256(file) if file else rec.digest},
                              uri=f"{scheme}:{rec.type}/{rec.name}@sha256:{rec.digest}",
                              annotations={"artifact": rec.label} if annotations is None else dict(annotations))


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Attestation:
    """What a sign stage signs: the Statement's inputs and the recorded ONNX version they are for."""

    inputs: statement.ProvenanceInputs
    onnx: ArtifactRecord

    @classmethod
    def of(cls, stage: Stage, onnx: ArtifactRecord, model: ArtifactRecord, dataset: ArtifactRecord,
           validation: ArtifactRecord, *, scheme: str, code: str, model_file: str,
           internal_parameters: Mapping[str, Any], code_uri: str | None = None, builder_id: str | None = None,
           builder_version: Mapping[str, str] | None = None, build_type: str = statement.BUILD_TYPE,
           started_on: datetime | None = None, raw_files: Sequence[statement.Resource] = (),
           dataset_annotations: Mapping[str, Any] | None = None,
           validation_annotations: Mapping[str, Any] | None = None, subject: str = "model.onnx",
           validation_file: str = "validation.json") -> Attestation:
        """The provenance of `onnx`'s file `subject` from the stage's records (`stage.record` of each) of it, of
        `model` (its file `model_file`), of `dataset` and of `validation` (its file `validation_file`, a
        byproduct); ValueError unless `validation` passed (`metadata["passed"]`) and is the validation of `onnx`.

        Each artifact's uri is `<scheme>:<type>/<name>@sha256:<digest>`, annotated with its label (or with
        `dataset_annotations`, `validation_annotations`). The code is `code` at `code_uri` (default
        `urn:prefect-wandb:<code>`, also the default `builder_id`), its git commit, dirty flag and packages those the
        run that exported `onnx` recorded; `externalParameters` is {"config": the sign run's recorded config};
        started: `started_on`, else when the run that made `model` started; finished: now."""
        if not validation.metadata.get("passed"):
            raise ValueError(f"{validation.label} failed: an ONNX file that did not validate is not attested")
        if onnx.digest not in {i["digest"] for i in validation.inputs("onnx")}:
            raise ValueError(f"{validation.label} is not the validation of {onnx.label}")
        exported, made = stage.store.run(onnx.producer_run_id), stage.store.run(model.producer_run_id)
        env = exported.env if exported else {}
        commit, uri = env.get("git_commit"), code_uri or f"urn:prefect-wandb:{code}"
        started = started_on or (datetime.fromisoformat(made.started_at) if made else datetime.now(timezone.utc))
        return cls(statement.ProvenanceInputs(
            subject_name=subject, subject_sha256=onnx.sha256(subject),
            external_parameters={"config": stage.config}, internal_parameters=dict(internal_parameters),
            dataset=_resource(dataset, scheme, annotations=dataset_annotations), raw_files=list(raw_files),
            model_file=_resource(model, scheme, model_file),
            code=statement.Resource(name=code, digest={"gitCommit": commit} if commit else {}, uri=uri,
                                    annotations={"dirty": env.get("git_dirty")}),
            packages=dict(env.get("packages") or {}), builder_id=builder_id or uri,
            builder_version=dict(builder_version or {}), build_type=build_type, invocation_id=stage.flow_run_id,
            started_on=_utc(started), finished_on=datetime.now(timezone.utc),
            byproducts=[_resource(validation, scheme, validation_file, validation_annotations)]), onnx)

    def write(self, private_key: Path, out: Path, *, command: str = "prefect-wandb",
              public_key_name: str = "signing.pub") -> dict:
        """`write` of the ONNX file (this host's copy of its version) into the empty folder `out`: the index."""
        return write(local_folder(self.onnx.path, self.onnx.files) / self.inputs.subject_name, private_key, out,
                     self.inputs, {"name": self.onnx.name, "digest": self.onnx.digest}, command=command,
                     public_key_name=public_key_name)
