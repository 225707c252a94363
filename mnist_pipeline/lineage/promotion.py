"""The pipeline's rules: retrain only if something changed, and the promotion gate (no Prefect, no W&B, no SQL).

`decide` is the gate as a pure decision table; `promote` applies it inside the store's promotion transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mnist_pipeline.lineage.queries import evaluations
from mnist_pipeline.lineage.store import ArtifactRecord, LineageStore, PromotionRecord


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided about a candidate (see `decide`)."""

    decision: Literal["promoted", "candidate"]
    reason: str
    production_accuracy: float | None = None


def decide(*, candidate_id: int, accuracy: float | None, validation_passed: bool, production_id: int | None,
           production_accuracy: float | None, margin: float, test_set: str | None = None,
           production_label: str | None = None, basis: str = "") -> Decision:
    """The promotion gate, first matching row wins:

    | validation | candidate accuracy | production                                     | decision  |
    |------------|--------------------|------------------------------------------------|-----------|
    | failed     | any                | any                                            | candidate |
    | passed     | none recorded      | any                                            | candidate |
    | passed     | any                | is this very model                             | promoted  |
    | passed     | any                | none                                           | promoted  |
    | passed     | any                | not measured on the candidate's test set (*)   | candidate |
    | passed     | a                  | no accuracy recorded, or a >= p+m              | promoted  |
    | passed     | a < p + margin     | p                                              | candidate |

    (*) with `test_set` (the candidate's dataset, e.g. "mnist:v3"), `production_accuracy` is production's accuracy
    on that same test set: accuracies measured on different data are never compared. `basis` says how it was
    measured (e.g. re-evaluated for this decision) and ends the reason.
    """
    if not validation_passed:
        return Decision("candidate", "onnxruntime validation did not pass", production_accuracy)
    if accuracy is None:
        return Decision("candidate", "no test accuracy recorded", production_accuracy)
    if production_id == candidate_id:
        return Decision("promoted", "already the production model", production_accuracy)
    if production_id is None:
        return Decision("promoted", "first validated model")
    prod = f"production {production_label}" if production_label else "production"
    on = f" on {test_set}" if test_set else ""
    tail = f" ({basis})" if basis else ""
    if test_set and production_accuracy is None:
        return Decision("candidate", f"{prod} has no accuracy on {test_set}, the candidate's test set: accuracies "
                                     f"on different data are not compared, so it stays candidate{tail}")
    if production_accuracy is None or accuracy >= production_accuracy + margin:
        shown = production_accuracy if production_accuracy is not None else float("nan")
        return Decision("promoted", f"accuracy {accuracy:.4f} >= {prod} {shown:.4f} + margin {margin:.4f}{on}{tail}",
                        production_accuracy)
    return Decision("candidate", f"accuracy {accuracy:.4f} < {prod} {production_accuracy:.4f} + margin "
                                 f"{margin:.4f}{on}{tail}", production_accuracy)


def promote(store: LineageStore, model_id: int, *, accuracy: float | None, validation_passed: bool, margin: float,
            flow_run_id: str | None, test_set: tuple[str, str] | None = None,
            reevaluated: dict[int, str] | None = None, note: str = "") -> PromotionRecord:
    """Decide about model `model_id` against the current production model, in one store transaction.

    With `test_set` = (label, digest) of the candidate's dataset, production's accuracy is the one measured on that
    dataset (like for like); `reevaluated` maps the metrics artifacts made for this decision to their label."""
    reevaluated = reevaluated or {}

    def gate(production_id: int | None) -> Decision:
        label = basis = None
        if production_id is None:
            prod_acc = None
        elif test_set is None:
            prod_acc = accuracy_of(store, production_id)
        else:
            rec = store.artifact(production_id)
            label = rec.label
            found = accuracy_on(store, production_id, test_set[1])
            prod_acc = found[0] if found else None
            if found and found[1].artifact_id in reevaluated:
                basis = (f"production re-evaluated on {test_set[0]}, the candidate's test set, for this decision: "
                         f"{reevaluated[found[1].artifact_id]}")
        return decide(candidate_id=model_id, accuracy=accuracy, validation_passed=validation_passed,
                      production_id=production_id, production_accuracy=prod_acc, margin=margin,
                      test_set=test_set[0] if test_set else None, production_label=label,
                      basis="; ".join(b for b in (basis, note) if b))
    return store.record_promotion(model_id, gate, accuracy=accuracy, validation_passed=validation_passed,
                                  margin=margin, flow_run_id=flow_run_id)


@dataclass(frozen=True)
class ChangeCheck:
    changed: bool
    reason: str
    production: str | None  # "convnet:v3" when there is a production model


def compare_with_production(store: LineageStore, model_name: str, dataset_digest: str, dataset_label: str,
                            fingerprint: dict) -> ChangeCheck:
    """Has anything that decides the weights changed since the production model was trained?"""
    prod = store.alias(model_name, "production")
    if prod is None:
        return ChangeCheck(True, f"no production {model_name} model yet", None)
    label = prod.label
    used = prod.inputs("dataset")
    if not used or used[0]["digest"] != dataset_digest:
        was = f"{used[0]['name']}:v{used[0]['version']}" if used else "an unrecorded dataset"
        return ChangeCheck(True, f"dataset {dataset_label} ({dataset_digest[:16]}) is not {was}, which trained "
                                 f"production {label}", label)
    before = prod.metadata.get("fingerprint") or {}
    diff = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
    if diff:
        changes = ", ".join(f"{k} {before.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
        return ChangeCheck(True, f"training config changed since production {label}: {changes}", label)
    return ChangeCheck(False, f"dataset {dataset_label} ({dataset_digest[:16]}) and training config are unchanged "
                              f"since production {label}", label)


def accuracy_of(store: LineageStore, model_artifact_id: int) -> float | None:
    """The test accuracy recorded by the newest finished evaluation of a model."""
    evaluated = evaluations(store, model_artifact_id)
    return evaluated[-1].metadata.get("test_accuracy") if evaluated else None


def accuracy_on(store: LineageStore, model_artifact_id: int, dataset_digest: str) -> tuple[float, ArtifactRecord] | None:
    """(accuracy, metrics artifact) of the newest finished evaluation of a model on the dataset with that digest."""
    measured = [a for a in evaluations(store, model_artifact_id, dataset_digest)
                if a.metadata.get("test_accuracy") is not None]
    return (measured[-1].metadata["test_accuracy"], measured[-1]) if measured else None
