"""The pipeline's rules: retrain only if something changed, and the promotion gate (no Prefect, no W&B, no SQL).

`decide` is the gate as a pure decision table; `promote` applies it inside the store's promotion transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect_wandb import rejections
from prefect_wandb.queries import evaluations
from prefect_wandb.store import ArtifactRecord, LineageStore, PromotionRecord


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided about a candidate (see `decide`)."""

    decision: Literal["promoted", "candidate"]
    reason: str
    production_accuracy: float | None = None


@dataclass(frozen=True)
class Signature:
    """Whether the candidate's ONNX file has a verified attestation from this run's sign stage, when the gate
    requires one (`promotion.require_signature`): `detail` is the key's fingerprint, or why not."""

    verified: bool
    detail: str


def decide(*, candidate_id: int, accuracy: float | None, validation_passed: bool, production_id: int | None,
           production_accuracy: float | None, margin: float, test_set: str | None = None,
           production_label: str | None = None, basis: str = "", candidate_label: str = "",
           rejection: str | None = None, earlier: str | None = None,
           signature: Signature | None = None) -> Decision:
    """The promotion gate, first matching row wins:

    | validation | candidate accuracy | the candidate / production                     | decision  |
    |------------|--------------------|------------------------------------------------|-----------|
    | failed     | any                | any                                            | candidate |
    | passed     | none recorded      | any                                            | candidate |
    | passed     | any                | rejected by an operator (a rollback)           | candidate |
    | passed     | any                | signature required, none verified              | candidate |
    | passed     | any                | is this very model                             | promoted  |
    | passed     | any                | the gate kept it candidate on this test set    | candidate |
    | passed     | any                | none                                           | promoted  |
    | passed     | any                | not measured on the candidate's test set (*)   | candidate |
    | passed     | a                  | no accuracy recorded, or a >= p+m              | promoted  |
    | passed     | a < p + margin     | p                                              | candidate |

    (*) with `test_set` (the candidate's dataset, e.g. "mnist:v3"), `production_accuracy` is production's accuracy
    on that same test set: accuracies measured on different data are never compared. `basis` says how it was
    measured (e.g. re-evaluated for this decision) and ends the reason. `rejection` describes the rejection in
    force ("rejected by rollback at <time> (<reason>)"); `earlier`, the gate's own earlier candidate verdict on this
    test set, which stands (the caller leaves it None when forced). `signature`: None when not required; with one,
    every reason says whether it verified.
    """
    d = _decide(candidate_id=candidate_id, accuracy=accuracy, validation_passed=validation_passed,
                production_id=production_id, production_accuracy=production_accuracy, margin=margin,
                test_set=test_set, production_label=production_label, basis=basis,
                candidate_label=candidate_label or "this model", rejection=rejection, earlier=earlier,
                signature=signature)
    if signature is not None and signature.verified:
        return Decision(d.decision, f"{d.reason}; signature verified (key {signature.detail[:16]})",
                        d.production_accuracy)
    return d


def _decide(*, candidate_id, accuracy, validation_passed, production_id, production_accuracy, margin, test_set,
            production_label, basis, candidate_label, rejection, earlier, signature) -> Decision:
    if not validation_passed:
        return Decision("candidate", "onnxruntime validation did not pass", production_accuracy)
    if accuracy is None:
        return Decision("candidate", "no test accuracy recorded", production_accuracy)
    # the rows that rest on no comparison carry no production accuracy: `earlier_verdict` reuses only comparisons
    if rejection:
        return Decision("candidate", f"{rejection}; `mnist-pipeline unreject {candidate_label}` lets the gate "
                                     "consider it again")
    if signature is not None and not signature.verified:
        return Decision("candidate", f"promotion.require_signature and no verified attestation ({signature.detail})")
    if production_id == candidate_id:
        return Decision("promoted", "already the production model", production_accuracy)
    if earlier:
        return Decision("candidate", f"{earlier}; the gate's record stands (force re-decides)")
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


def earlier_verdict(store: LineageStore, model_id: int, test_set: tuple[str, str] | None) -> str | None:
    """The gate's newest verdict on the merits about this model on this test set, when it kept it candidate (None
    otherwise). On the merits: a promotion, or an accuracy comparison with production; not a verdict that rested on
    circumstances (a rejection, a missing signature or accuracy, a failed validation)."""
    if test_set is None:
        return None
    mine = [p for p in store.promotions(model_id) if p.kind is None and p.test_set == test_set[1] and (
        p.decision == "promoted" or (p.validation_passed and p.candidate_accuracy is not None
                                     and p.production_accuracy is not None))]
    if not mine or mine[-1].decision != "candidate":
        return None
    return f"the gate kept it candidate on {test_set[0]} at {mine[-1].decided_at}: {mine[-1].reason}"


def promote(store: LineageStore, model_id: int, *, accuracy: float | None, validation_passed: bool, margin: float,
            flow_run_id: str | None, test_set: tuple[str, str] | None = None,
            reevaluated: dict[int, str] | None = None, note: str = "", force: bool = False,
            signature: Signature | None = None) -> PromotionRecord:
    """Decide about model `model_id` against the current production model, in one store transaction.

    With `test_set` = (label, digest) of the candidate's dataset, production's accuracy is the one measured on that
    dataset (like for like); `reevaluated` maps the metrics artifacts made for this decision to their label. A
    rejection in force keeps the model candidate; so does the gate's earlier candidate verdict on the same test set,
    unless `force`."""
    reevaluated = reevaluated or {}
    candidate = store.artifact(model_id)

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
        rejected = rejections.current(store, model_id)
        return decide(candidate_id=model_id, accuracy=accuracy, validation_passed=validation_passed,
                      production_id=production_id, production_accuracy=prod_acc, margin=margin,
                      test_set=test_set[0] if test_set else None, production_label=label,
                      basis="; ".join(b for b in (basis, note) if b), candidate_label=candidate.label,
                      rejection=rejected.describe() if rejected else None,
                      earlier=None if force else earlier_verdict(store, model_id, test_set), signature=signature)
    return store.record_promotion(model_id, gate, accuracy=accuracy, validation_passed=validation_passed,
                                  margin=margin, flow_run_id=flow_run_id, test_set=test_set[1] if test_set else None)


@dataclass(frozen=True)
class ChangeCheck:
    changed: bool
    reason: str
    production: str | None  # "convnet:v3" when there is a production model
    model: str | None = None  # a finished model these inputs already made (production's, when unchanged)
    model_digest: str | None = None
    decided: str | None = None  # what was decided about `model`, when anything was: the run stops there


@dataclass(frozen=True)
class MadeModel:
    """A finished model as the skip rule sees it."""

    label: str
    digest: str
    dataset_digest: str | None
    dataset_label: str | None
    fingerprint: dict
    production: bool = False
    decided: str | None = None  # "rejected by rollback at ...", "the gate kept it candidate at ...: ..."


def skip_rule(models: list[MadeModel], model_name: str, dataset_digest: str, dataset_label: str,
              fingerprint: dict) -> ChangeCheck:
    """Train, or not? `models`: the finished models of that name, oldest first. First matching row wins:

    | a finished model of these inputs (dataset digest + fingerprint) | production           | outcome         |
    |-----------------------------------------------------------------|----------------------|-----------------|
    | production's                                                    | -                    | skip            |
    | another, already decided (by the gate or an operator)           | any                  | skip, saying so |
    | another, never decided                                          | any                  | reuse: gate it  |
    | none                                                            | none                 | train           |
    | none                                                            | other dataset        | train           |
    | none                                                            | other fingerprint    | train           |
    """
    prod = next((m for m in models if m.production), None)
    same = [m for m in models if m.dataset_digest == dataset_digest and not _differences(m.fingerprint, fingerprint)]
    inputs = f"dataset {dataset_label} ({dataset_digest[:16]}) and training config"
    if prod is not None and prod in same:
        return ChangeCheck(False, f"{inputs} are unchanged since production {prod.label}", prod.label, prod.label,
                           prod.digest)
    label = prod.label if prod else None
    if same:
        m = same[-1]
        if m.decided:
            return ChangeCheck(False, f"{inputs} already made {m.label}, and it was decided: {m.decided}", label,
                               m.label, m.digest, m.decided)
        return ChangeCheck(False, f"{inputs} already made {m.label}, never decided by the gate: it goes to the gate "
                                  "without retraining", label, m.label, m.digest)
    if prod is None:
        return ChangeCheck(True, f"no production {model_name} model yet", None)
    if prod.dataset_digest != dataset_digest:
        was = prod.dataset_label or "an unrecorded dataset"
        return ChangeCheck(True, f"dataset {dataset_label} ({dataset_digest[:16]}) is not {was}, which trained "
                                 f"production {label}", label)
    before = prod.fingerprint
    diff = _differences(before, fingerprint)
    changes = ", ".join(f"{k} {before.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
    return ChangeCheck(True, f"training config changed since production {label}: {changes}", label)


def _differences(before: dict, now: dict) -> list[str]:
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def made_models(store: LineageStore, model_name: str) -> list[MadeModel]:
    """The finished models of that name whose files gc has not deleted, as the skip rule sees them."""
    prod = store.alias(model_name, "production")
    deleted = store.deletions()
    out = []
    for a in store.artifacts("model"):
        if a.name != model_name or a.artifact_id in deleted:
            continue
        used = a.inputs("dataset")
        decided = None
        rejected = rejections.current(store, a.artifact_id)
        if rejected is not None:
            decided = rejected.describe()
        else:
            # an unreject lets the gate consider the model afresh: what it said while it was rejected is not the answer
            lifted = max((r.at for r in rejections.history(store, a.artifact_id) if r.action == "unreject"),
                         default="")
            verdicts = [p for p in store.promotions(a.artifact_id) if p.kind is None and p.decided_at > lifted]
            if verdicts:
                v, is_prod = verdicts[-1], prod is not None and prod.artifact_id == a.artifact_id
                decided = (f"kept candidate by the gate at {v.decided_at}: {v.reason}" if v.decision == "candidate"
                           else f"promoted by the gate at {v.decided_at} ({v.reason})"
                           + ("" if is_prod else ", since replaced as production"))
        out.append(MadeModel(a.label, a.digest, used[0]["digest"] if used else None,
                             f"{used[0]['name']}:v{used[0]['version']}" if used else None,
                             a.metadata.get("fingerprint") or {}, prod is not None and prod.artifact_id == a.artifact_id,
                             decided))
    return out


def compare_with_production(store: LineageStore, model_name: str, dataset_digest: str, dataset_label: str,
                            fingerprint: dict) -> ChangeCheck:
    """Has anything that decides the weights changed since a finished model (production's or another) was made?"""
    return skip_rule(made_models(store, model_name), model_name, dataset_digest, dataset_label, fingerprint)


def accuracy_of(store: LineageStore, model_artifact_id: int) -> float | None:
    """The test accuracy recorded by the newest finished evaluation of a model."""
    evaluated = evaluations(store, model_artifact_id)
    return evaluated[-1].metadata.get("test_accuracy") if evaluated else None


def accuracy_on(store: LineageStore, model_artifact_id: int, dataset_digest: str) -> tuple[float, ArtifactRecord] | None:
    """(accuracy, metrics artifact) of the newest finished evaluation of a model on the dataset with that digest."""
    measured = [a for a in evaluations(store, model_artifact_id, dataset_digest)
                if a.metadata.get("test_accuracy") is not None]
    return (measured[-1].metadata["test_accuracy"], measured[-1]) if measured else None
