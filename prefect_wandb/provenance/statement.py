"""The in-toto Statement (v1) with a SLSA Provenance v1 predicate for an exported model, from explicit inputs.

The Statement and its ResourceDescriptors are in-toto-attestation's own (`in_toto_attestation.v1`): they build and
validate it and name its fields. Only what they hold in a protobuf `Struct` (the predicate, a descriptor's
annotations) is written from our JSON values instead: a Struct keeps every number as a double (an epoch count 5
would be signed as 5.0), which would change the signed bytes.

Every resolved dependency carries `annotations.role` (dataset, raw-file, model, code, package) so a reader, and
`verify`'s tree, can tell them apart without guessing from names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement

__all__ = ["ProvenanceInputs", "Resource", "build", "dependencies", "parse", "subject"]

STATEMENT_TYPE = STATEMENT_TYPE_URI  # "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/prefect-wandb/build/v1"  # a pipeline names its own (`ProvenanceInputs.build_type`)


@dataclass(frozen=True)
class Resource:
    """A SLSA ResourceDescriptor: at least a uri or a digest."""

    name: str
    digest: dict[str, str] = field(default_factory=dict)
    uri: str | None = None
    annotations: dict = field(default_factory=dict)

    def to_dict(self, role: str) -> dict:
        if not self.digest and not self.uri:
            raise ValueError(f"resource {self.name!r} has neither a digest nor a uri")
        return {**_descriptor(self.name, self.digest, self.uri), "annotations": {"role": role, **self.annotations}}


def _descriptor(name: str, digest: dict[str, str], uri: str | None = None) -> dict:
    """A ResourceDescriptor's name, uri and digest (strings: exact in JSON), validated by in-toto-attestation."""
    if not name:
        raise ValueError("a resource descriptor without a name")  # the tree and the files always have one
    rd = ResourceDescriptor(name=name, uri=uri or "", digest=dict(digest))
    rd.validate()
    return json_format.MessageToDict(rd.pb)


@dataclass(frozen=True)
class ProvenanceInputs:
    subject_name: str  # the file name, e.g. model.onnx
    subject_sha256: str
    external_parameters: dict  # the flow's config
    internal_parameters: dict  # seed, threads, device
    dataset: Resource
    raw_files: list[Resource]
    model_file: Resource
    code: Resource
    packages: dict[str, str | None]
    builder_id: str
    invocation_id: str | None
    started_on: datetime
    finished_on: datetime
    byproducts: list[Resource] = field(default_factory=list)
    builder_version: dict[str, str] = field(default_factory=dict)
    build_type: str = BUILD_TYPE  # the URI of what the pipeline's build is (SLSA buildDefinition.buildType)


def _time(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("provenance times must be timezone-aware")
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def build(p: ProvenanceInputs) -> dict:
    if len(p.subject_sha256) != 64:
        raise ValueError(f"subject sha256 {p.subject_sha256!r} is not a sha256 hex digest")
    if not p.subject_name:
        raise ValueError("the subject has no name")
    deps = [p.dataset.to_dict("dataset"), *(r.to_dict("raw-file") for r in p.raw_files),
            p.model_file.to_dict("model"), p.code.to_dict("code")]
    deps += [Resource(name=n, uri=f"pkg:pypi/{n}@{v}", annotations={"version": v}).to_dict("package")
             for n, v in sorted(p.packages.items()) if v]
    metadata: dict = {"startedOn": _time(p.started_on), "finishedOn": _time(p.finished_on)}
    if p.invocation_id:
        metadata["invocationId"] = p.invocation_id
    builder: dict = {"id": p.builder_id}
    if p.builder_version:
        builder["version"] = dict(p.builder_version)
    predicate = {
        "buildDefinition": {"buildType": p.build_type, "externalParameters": p.external_parameters,
                            "internalParameters": p.internal_parameters, "resolvedDependencies": deps},
        "runDetails": {"builder": builder, "metadata": metadata,
                       "byproducts": [b.to_dict("byproduct") for b in p.byproducts]},
    }
    st = Statement([ResourceDescriptor(name=p.subject_name, digest={"sha256": p.subject_sha256}).pb],
                   SLSA_PROVENANCE, predicate)
    st.validate()
    # {"_type", "subject", "predicateType"} from the library; the predicate as built, not as its Struct's doubles
    return {**json_format.MessageToDict(st.pb), "predicate": predicate}


def to_bytes(statement: dict) -> bytes:
    """The payload that is signed: sorted keys, so equal Statements give equal bytes."""
    return json.dumps(statement, sort_keys=True, indent=1).encode("utf-8")


def parse(payload: bytes) -> dict:
    """The Statement of a verified payload; ValueError if it is not an in-toto v1 SLSA Provenance v1 Statement."""
    try:
        st = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the payload is not JSON ({e})") from None
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != SLSA_PROVENANCE:
        raise ValueError(f"the payload is not an in-toto Statement with predicate {SLSA_PROVENANCE}")
    subjects = st.get("subject")
    if not isinstance(subjects, list) or not subjects or not isinstance(subjects[0], dict) or \
            "sha256" not in (subjects[0].get("digest") or {}):
        raise ValueError("the Statement names no subject with a sha256 digest")
    try:  # and the rest as in-toto-attestation reads a Statement (fields of the right types, every subject digested)
        Statement.copy_from_pb(json_format.ParseDict(st, statement_pb2.Statement(), ignore_unknown_fields=True)) \
            .validate()
    except (json_format.ParseError, ValueError, OverflowError) as e:  # OverflowError: an int past a double
        raise ValueError(f"the payload is not a valid in-toto Statement ({e})") from None
    return st


def subject(statement: dict) -> tuple[str, str]:
    s = statement["subject"][0]
    return s.get("name", ""), s["digest"]["sha256"]


def dependencies(statement: dict, role: str) -> list[dict]:
    deps = statement.get("predicate", {}).get("buildDefinition", {}).get("resolvedDependencies", [])
    return [d for d in deps if (d.get("annotations") or {}).get("role") == role]
