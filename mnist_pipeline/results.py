"""What each stage reports, as frozen records: written into its artifact's metadata (or its run's summary) and read
back through the same type, so that no consumer reads another stage's metadata by string key.

Pure code: no Prefect, no W&B, no torch. Each record's `to_metadata()` gives the keys the stage has always written,
and `from_metadata()` reads what a store already holds: a key an older version did not write takes its default,
a key this version does not know is ignored. The values are kept as they are (no coercion): equal records, equal
metadata. The artifact FILES (metrics.json, validation.json...) are written by the stages as before; these records
only shape their metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from prefect_wandb import WandbWhereabouts

# A field that is left out of `to_metadata()` while it is None: a key that only some records ever had.
_OPTIONAL = {"optional": True}


def _optional(default: Any = None) -> Any:
    return field(default=default, metadata=_OPTIONAL)


class _Record:
    """`from_metadata` / `to_metadata` over a frozen dataclass's fields."""

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (meta or {}).items() if k in known})

    def to_metadata(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if not (f.metadata.get("optional") and getattr(self, f.name) is None)}


@dataclass(frozen=True)
class TrainingResult(_Record):
    """How a training went: the train run's summary (not the model's files, which hold only what the weights are a
    function of)."""

    train_seconds: float | None = None
    final_loss: float | None = None
    examples_seen: int | None = None
    resumed: bool = False
    resumed_from_checkpoint: dict | None = None  # {epoch, batch, examples_seen} when a checkpoint was picked up
    checkpoint_written_by: str | None = None
    threads: int | None = None
    device: str | None = None
    torch_deterministic: bool | None = None
    loss_points: list = field(default_factory=list)  # (examples seen, epoch, loss), every logged point

    def loss_curve(self) -> list[tuple[int, int, float]]:
        return [(p[0], p[1], p[2]) for p in self.loss_points]


@dataclass(frozen=True)
class ModelInfo(_Record):
    """The model artifact's metadata: a copy of its `model_config.json`."""

    model_config: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)  # what decides the weights (the skip rule compares it)
    channels_last: bool | None = None
    examples_seen: int | None = None
    batches: int | None = None
    final_loss: float | None = None


@dataclass(frozen=True)
class DatasetInfo(_Record):
    """The dataset artifact's metadata (a copy of its `dataset.json`): where the splits came from."""

    source: str | None = None
    source_location: str | None = None
    mirrors: list = field(default_factory=list)
    raw_store: str | None = None
    slice: int | None = None
    raw_files: list = field(default_factory=list)  # {name, sha256, size, md5, ...} per raw file
    notes: list = field(default_factory=list)
    sizes: dict | None = None  # {train, test}
    class_counts: dict = field(default_factory=dict)
    prepared_from: str | None = _optional()  # `changes.source_key`: the sources and settings it was prepared from


@dataclass(frozen=True)
class MetricsResult(_Record):
    """An evaluation: the metrics artifact's metadata. `misclassified` (the first misclassified test images) is in
    its `metrics.json` only, so it is set when the record is read from that file (`from_metadata` of file and
    metadata together) and left out of the metadata otherwise."""

    test_accuracy: float | None = None
    test_loss: float | None = None
    test_count: int | None = None
    per_class_accuracy: list = field(default_factory=list)
    confusion_matrix: list = field(default_factory=list)
    misclassified_count: int | None = None
    misclassified: list | None = _optional()  # {index, prediction, label} per image

    def values(self) -> dict[str, float]:
        """The figures a sweep ranks trials by (those recorded)."""
        return {k: v for k, v in (("test_accuracy", self.test_accuracy), ("test_loss", self.test_loss))
                if v is not None}


@dataclass(frozen=True)
class ValidationResult(_Record):
    """The onnxruntime check of an ONNX file against the torch logits of its evaluation (`onnx_io.Validation`)."""

    max_abs_diff: float = float("nan")
    argmax_agreement: float = float("nan")
    ort_accuracy: float = float("nan")
    torch_accuracy: float = float("nan")
    count: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    throughput_batch: int | None = None
    ort_throughput_per_s: float | None = None
    torch_throughput_per_s: float | None = None
    passed: bool = False
    tolerance: float | None = None
    min_agreement: float | None = None

    @classmethod
    def from_report(cls, report: Any) -> ValidationResult:
        """From `onnx_io.Validation` (a dataclass of the same fields)."""
        return cls.from_metadata(dataclasses.asdict(report))

    def figures(self) -> dict[str, Any]:
        """What an attestation says of the validation it rests on."""
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "argmax_agreement": self.argmax_agreement, "ort_accuracy": self.ort_accuracy,
                "torch_accuracy": self.torch_accuracy, "count": self.count}


@dataclass(frozen=True)
class AttestationInfo(_Record):
    """The attestation artifact's metadata: a copy of its `attestation.json` index."""

    subject: dict = field(default_factory=dict)  # {name, sha256} of the signed file
    public_key_fingerprint: str = ""
    bundle: str | None = None
    envelope: str | None = None
    signer_public_key: str | None = None
    onnx_artifact: dict = field(default_factory=dict)  # {name, digest}
    payload_type: str | None = None
    predicate_type: str | None = None
    verify: str | None = None
    verify_bundle: str | None = None


@dataclass(frozen=True)
class PromotionOutcome(_Record):
    """The promotion decision as a run reports it (the full record is the store's `PromotionRecord`)."""

    decision: Literal["promoted", "candidate"]
    reason: str
    candidate_accuracy: float | None = None
    production_accuracy: float | None = None

    @classmethod
    def of(cls, decision: Any) -> PromotionOutcome:
        """From a `PromotionRecord` (the gate's metric here is test accuracy)."""
        return cls(decision.decision, decision.reason, decision.candidate_value, decision.production_value)


@dataclass(frozen=True)
class SweepResult(_Record):
    """The sweep-result artifact's metadata (a copy of its `sweep.json`): the ranked table and the winner."""

    sweep: dict = field(default_factory=dict)
    metric: dict = field(default_factory=dict)  # {name, goal}
    trials: list = field(default_factory=list)
    winner: dict | None = None  # {trial, params, <metric>, model, metrics}; None: no trial finished
    failed: list = field(default_factory=list)

    @property
    def winner_trial(self) -> int | None:
        return int(self.winner["trial"]) if self.winner else None


@dataclass(frozen=True)
class ArtifactLocation(_Record):
    """Where a run's output is: `name:vN`, its digest, its folder."""

    ref: str
    digest: str
    path: str

    @classmethod
    def of(cls, artifact: Any) -> ArtifactLocation:
        """From an `ArtifactRef` or `ArtifactRecord`."""
        return cls(artifact.label, artifact.digest, artifact.path)


@dataclass(frozen=True)
class RunSummary(_Record):
    """What a run of the pipeline flow hands back (and `mnist-pipeline run` prints as JSON): `to_metadata()` has
    the keys of the run's kind, skipped or completed; a field left None is not a key."""

    status: Literal["completed", "skipped", "failed"]
    reason: str
    lineage_db: str
    config_sources: dict = field(default_factory=dict)
    production: str | None = _optional()  # skipped: the production model that stays
    model: str | None = _optional()  # skipped: the model of these inputs the gate already decided about
    artifacts: dict[str, ArtifactLocation] = field(default_factory=dict)  # by artifact type
    test_accuracy: float | None = _optional()
    test_loss: float | None = _optional()
    onnx_accuracy: float | None = _optional()
    onnx_max_abs_diff: float | None = _optional()
    onnx_argmax_agreement: float | None = _optional()
    onnx_latency_ms_p50: float | None = _optional()
    onnx_throughput_per_s: float | None = _optional()
    promotion: PromotionOutcome | None = _optional()
    report: str | None = _optional()
    onnx_file: str | None = _optional()
    signed_onnx_file: str | None = _optional()
    wandb: WandbWhereabouts | None = _optional()  # where the W&B records went

    # the order of the keys in the JSON: as `mnist-pipeline run` has always printed them
    _SKIPPED = ("status", "reason", "production", "model", "artifacts", "lineage_db", "config_sources", "wandb")
    _COMPLETED = ("status", "reason", "artifacts", "test_accuracy", "test_loss", "onnx_accuracy", "onnx_max_abs_diff",
                  "onnx_argmax_agreement", "onnx_latency_ms_p50", "onnx_throughput_per_s", "promotion", "lineage_db",
                  "config_sources", "report", "onnx_file", "signed_onnx_file", "wandb")

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> Self:
        d = dict(meta or {})
        d["artifacts"] = {k: ArtifactLocation.from_metadata(v) for k, v in (d.get("artifacts") or {}).items()}
        if d.get("promotion") is not None:
            d["promotion"] = PromotionOutcome.from_metadata(d["promotion"])
        return super().from_metadata(_wandb_from_json(d))

    def to_metadata(self) -> dict[str, Any]:
        flat = super().to_metadata()
        flat["artifacts"] = {k: a.to_metadata() for k, a in self.artifacts.items()}
        if self.promotion is not None:
            flat["promotion"] = self.promotion.to_metadata()
        if self.wandb is not None:
            flat["wandb"] = self.wandb.as_json()
        order = self._SKIPPED if self.status == "skipped" else self._COMPLETED
        return {k: flat[k] for k in sorted(flat, key=lambda k: order.index(k) if k in order else len(order))}

    to_dict = to_metadata


def _wandb_from_json(d: dict[str, Any]) -> dict[str, Any]:
    """A summary's `wandb` read back from its JSON (the library's typed record)."""
    if isinstance(d.get("wandb"), Mapping):
        from prefect_wandb import WandbWhereabouts

        d["wandb"] = WandbWhereabouts.from_json(d["wandb"])
    return d


@dataclass(frozen=True)
class SweepSummary(_Record):
    """What a run of the sweep flow hands back (and `mnist-pipeline sweep` prints as JSON)."""

    status: Literal["completed", "completed_with_failures"]
    sweep: dict
    flow_run_id: str
    workers: int
    sweep_result: ArtifactLocation
    trials: list[dict]  # one row per trial: params, status, figures, model, worker, times, error
    failed: list[int]
    lineage_db: str
    winner: dict | None = _optional()  # the winner's figures and its ONNX file, validation, attestation
    promotion: PromotionOutcome | None = _optional()
    report: str | None = _optional()  # the winner's run report, as `run` makes one
    onnx_file: str | None = _optional()  # the winner's ONNX file (the one to deploy and audit), under run's key
    wandb: WandbWhereabouts | None = _optional()  # where the W&B records went

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> Self:
        d = dict(meta or {})
        if isinstance(d.get("sweep_result"), Mapping):
            d["sweep_result"] = ArtifactLocation.from_metadata(d["sweep_result"])
        if d.get("promotion") is not None:
            d["promotion"] = PromotionOutcome.from_metadata(d["promotion"])
        return super().from_metadata(_wandb_from_json(d))

    def to_metadata(self) -> dict[str, Any]:
        flat = super().to_metadata()
        flat["sweep_result"] = self.sweep_result.to_metadata()
        if self.promotion is not None:
            flat["promotion"] = self.promotion.to_metadata()
        if self.wandb is not None:
            flat["wandb"] = self.wandb.as_json()
        return flat

    to_dict = to_metadata
