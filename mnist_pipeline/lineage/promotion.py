"""Retrain-only-if-changed and the promotion gate, read from the lineage store (no Prefect, no W&B)."""

from __future__ import annotations

from dataclasses import dataclass

from mnist_pipeline.lineage.store import LineageStore


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
        if run["job_type"] != "evaluate" or run["status"] != "finished":
            continue
        for art in store.edges(run_id)["produced"]:
            if art.type == "metrics":
                latest = art.metadata.get("test_accuracy")
    return latest
