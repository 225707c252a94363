"""The pipeline's rules: retrain only if something changed, and the promotion gate (no Prefect, no W&B, no SQL).

`decide` is the gate as a pure decision table; `promote` applies it inside the store's promotion transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_pipeline.lineage.store import Decision, LineageStore, PromotionRecord


def decide(*, candidate_id: int, accuracy: float | None, validation_passed: bool, production_id: int | None,
           production_accuracy: float | None, margin: float) -> Decision:
    """The promotion gate, first matching row wins:

    | validation | candidate accuracy | production                         | decision  |
    |------------|--------------------|------------------------------------|-----------|
    | failed     | any                | any                                | candidate |
    | passed     | none recorded      | any                                | candidate |
    | passed     | any                | is this very model                 | promoted  |
    | passed     | any                | none                               | promoted  |
    | passed     | a                  | no accuracy recorded, or a >= p+m  | promoted  |
    | passed     | a < p + margin     | p                                  | candidate |
    """
    if not validation_passed:
        return Decision("candidate", "onnxruntime validation did not pass", production_accuracy)
    if accuracy is None:
        return Decision("candidate", "no test accuracy recorded", production_accuracy)
    if production_id == candidate_id:
        return Decision("promoted", "already the production model", production_accuracy)
    if production_id is None:
        return Decision("promoted", "first validated model")
    if production_accuracy is None or accuracy >= production_accuracy + margin:
        shown = production_accuracy if production_accuracy is not None else float("nan")
        return Decision("promoted", f"accuracy {accuracy:.4f} >= production {shown:.4f} + margin {margin:.4f}",
                        production_accuracy)
    return Decision("candidate", f"accuracy {accuracy:.4f} < production {production_accuracy:.4f} + margin "
                                 f"{margin:.4f}", production_accuracy)


def promote(store: LineageStore, model_id: int, *, accuracy: float | None, validation_passed: bool, margin: float,
            flow_run_id: str | None) -> PromotionRecord:
    """Decide about model `model_id` against the current production model, in one store transaction."""
    def gate(production_id: int | None) -> Decision:
        prod_acc = accuracy_of(store, production_id) if production_id is not None else None
        return decide(candidate_id=model_id, accuracy=accuracy, validation_passed=validation_passed,
                      production_id=production_id, production_accuracy=prod_acc, margin=margin)
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
    label = f"{prod.name}:v{prod.version}"
    used = [i for i in prod.metadata.get("inputs", []) if i["type"] == "dataset"]
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
    latest = None
    for run_id in store.consumers(model_artifact_id):
        run = store.run(run_id)
        if run is None or run.job_type != "evaluate" or run.status != "finished":
            continue
        for art in store.edges(run_id)["produced"]:
            if art.type == "metrics":
                latest = art.metadata.get("test_accuracy")
    return latest
