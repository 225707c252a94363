"""The promotion gate (no Prefect, no W&B, no SQL): `GatePolicy` says what it compares, `decide` is the gate as a
pure decision table, and `promote` applies it inside the store's promotion transaction."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_wandb import rejections
from prefect_wandb.queries import evaluations
from prefect_wandb.store import ArtifactRecord, LineageStore, PromotionRecord


class GatePolicy(BaseModel):
    """What the gate compares: the `metric` recorded in the metadata of the `metrics_type` artifacts that runs of job
    type `measured_by` produce from a model (and from the `test_set_type` artifact they measured it on), better when
    higher (`higher_is_better`) by at least `margin`. A promoted model gets `production_alias` (and every gated one
    `candidate_alias`); `label` names the metric in the gate's reasons (default: `metric`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1)
    higher_is_better: bool = True
    margin: float = Field(0.0, ge=0)
    label: str | None = None
    measured_by: str = "evaluate"
    metrics_type: str = "metrics"
    test_set_type: str = "dataset"
    production_alias: str = "production"
    candidate_alias: str = "candidate"

    @property
    def name(self) -> str:
        return self.label or self.metric

    def beats(self, value: float, production: float) -> bool:
        """Does `value` beat `production` by the margin (equal to production plus the margin counts)?"""
        return value >= production + self.margin if self.higher_is_better else value <= production - self.margin

    def comparison(self, value: float, production: float | None, prod: str) -> str:
        """'rmse 0.3100 <= production 0.3500 - margin 0.0000' (or '<=' and '- margin' when lower is better)."""
        shown = production if production is not None else math.nan
        wins = production is None or self.beats(value, production)
        if self.higher_is_better:
            op, sign = (">=" if wins else "<"), "+"
        else:
            op, sign = ("<=" if wins else ">"), "-"
        return f"{self.name} {value:.4f} {op} {prod} {shown:.4f} {sign} margin {self.margin:.4f}"


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided about a candidate (see `decide`); `production_value` is production's value
    of the policy's metric, when the decision rested on a comparison, and `production_metrics_id` the artifact it
    was read from (set by `promote`, which records it as an input of the deciding run)."""

    decision: Literal["promoted", "candidate"]
    reason: str
    production_value: float | None = None
    production_metrics_id: int | None = None


@dataclass(frozen=True)
class Signature:
    """Whether the candidate's file has a verified attestation, when the gate requires one: `detail` is the key's
    fingerprint, or why not."""

    verified: bool
    detail: str


def decide(*, candidate_id: int, value: float | None, validation_passed: bool, production_id: int | None,
           production_value: float | None, policy: GatePolicy, test_set: str | None = None,
           production_label: str | None = None, basis: str = "", candidate_label: str = "",
           rejection: str | None = None, earlier: str | None = None, signature: Signature | None = None,
           unreject_hint: str = "unreject") -> Decision:
    """The promotion gate, first matching row wins (v: the candidate's metric, p: production's, m: the margin;
    "beats" is v >= p + m when higher is better, v <= p - m when lower is):

    | validation | candidate metric | the candidate / production                     | decision  |
    |------------|------------------|------------------------------------------------|-----------|
    | failed     | any              | any                                            | candidate |
    | passed     | none recorded    | any                                            | candidate |
    | passed     | any              | rejected by an operator (a rollback)           | candidate |
    | passed     | any              | signature required, none verified              | candidate |
    | passed     | any              | is this very model                             | promoted  |
    | passed     | any              | the gate kept it candidate on this test set    | candidate |
    | passed     | any              | none                                           | promoted  |
    | passed     | any              | not measured on the candidate's test set (*)   | candidate |
    | passed     | v                | no metric recorded, or v beats p               | promoted  |
    | passed     | v                | p, and v does not beat it                      | candidate |

    (*) with `test_set` (the candidate's dataset, e.g. "houses:v3"), `production_value` is production's metric on
    that same test set: metrics measured on different data are never compared. `basis` says how it was measured
    (e.g. re-evaluated for this decision) and ends the reason. `rejection` describes the rejection in force
    ("rejected by rollback at <time> (<reason>)"); `earlier`, the gate's own earlier candidate verdict on this test
    set, which stands (the caller leaves it None when forced). `signature`: None when not required; with one,
    every reason says whether it verified. `unreject_hint`: the command a rejected model's reason names.
    """
    d = _decide(candidate_id=candidate_id, value=value, validation_passed=validation_passed,
                production_id=production_id, production_value=production_value, policy=policy,
                test_set=test_set, production_label=production_label, basis=basis,
                candidate_label=candidate_label or "this model", rejection=rejection, earlier=earlier,
                signature=signature, unreject_hint=unreject_hint)
    if signature is not None and signature.verified:
        return Decision(d.decision, f"{d.reason}; signature verified (key {signature.detail[:16]})",
                        d.production_value)
    return d


def _decide(*, candidate_id, value, validation_passed, production_id, production_value, policy, test_set,
            production_label, basis, candidate_label, rejection, earlier, signature, unreject_hint) -> Decision:
    if not validation_passed:
        return Decision("candidate", "onnxruntime validation did not pass", production_value)
    if value is None:
        return Decision("candidate", f"no test {policy.name} recorded", production_value)
    # the rows that rest on no comparison carry no production value: `earlier_verdict` reuses only comparisons
    if rejection:
        return Decision("candidate", f"{rejection}; `{unreject_hint} {candidate_label}` lets the gate consider it "
                                     "again")
    if signature is not None and not signature.verified:
        return Decision("candidate", f"promotion.require_signature and no verified attestation ({signature.detail})")
    if production_id == candidate_id:
        return Decision("promoted", "already the production model", production_value)
    if earlier:
        return Decision("candidate", f"{earlier}; the gate's record stands (force re-decides)")
    if production_id is None:
        return Decision("promoted", "first validated model")
    prod = f"production {production_label}" if production_label else "production"
    on = f" on {test_set}" if test_set else ""
    tail = f" ({basis})" if basis else ""
    if test_set and production_value is None:
        return Decision("candidate", f"{prod} has no {policy.name} on {test_set}, the candidate's test set: metrics "
                                     f"on different data are not compared, so it stays candidate{tail}")
    wins = production_value is None or policy.beats(value, production_value)
    return Decision("promoted" if wins else "candidate",
                    f"{policy.comparison(value, production_value, prod)}{on}{tail}", production_value)


def earlier_verdict(store: LineageStore, model_id: int, test_set: tuple[str, str] | None) -> str | None:
    """The gate's newest verdict on the merits about this model on this test set, when it kept it candidate (None
    otherwise). On the merits: a promotion, or a comparison with production; not a verdict that rested on
    circumstances (a rejection, a missing signature or metric, a failed validation)."""
    if test_set is None:
        return None
    mine = [p for p in store.promotions(model_id) if p.kind is None and p.test_set == test_set[1] and (
        p.decision == "promoted" or (p.validation_passed and p.candidate_value is not None
                                     and p.production_value is not None))]
    if not mine or mine[-1].decision != "candidate":
        return None
    return f"the gate kept it candidate on {test_set[0]} at {mine[-1].decided_at}: {mine[-1].reason}"


def promote(store: LineageStore, model_id: int, *, value: float | None, validation_passed: bool,
            policy: GatePolicy, flow_run_id: str | None, test_set: tuple[str, str] | None = None,
            reevaluated: dict[int, str] | None = None, note: str = "", force: bool = False,
            signature: Signature | None = None, unreject_hint: str = "unreject",
            run_id: str | None = None) -> PromotionRecord:
    """Decide about model `model_id` against the current production model, in one store transaction.

    With `test_set` = (label, digest) of the candidate's dataset, production's metric is the one measured on that
    dataset (like for like); `reevaluated` maps the metrics artifacts made for this decision to their label. A
    rejection in force keeps the model candidate; so does the gate's earlier candidate verdict on the same test set,
    unless `force`. The metrics artifact production's value was read from, whichever run made it (production's own
    evaluation, an earlier re-evaluation, this decision's), is recorded with the decision
    (`production_metrics_id`) and as an input of `run_id`, the deciding run, in the same transaction."""
    reevaluated = reevaluated or {}
    candidate = store.artifact(model_id)

    def gate(production_id: int | None) -> Decision:
        label = basis = None
        found = None
        if production_id is not None and test_set is None:
            found = measured_with_source(store, production_id, policy)
        elif production_id is not None and test_set is not None:
            label = store.artifact(production_id).label
            found = measured_on(store, production_id, test_set[1], policy)
            if found and found[1].artifact_id in reevaluated:
                basis = (f"production re-evaluated on {test_set[0]}, the candidate's test set, for this decision: "
                         f"{reevaluated[found[1].artifact_id]}")
        rejected = rejections.current(store, model_id)
        d = decide(candidate_id=model_id, value=value, validation_passed=validation_passed,
                   production_id=production_id, production_value=found[0] if found else None, policy=policy,
                   test_set=test_set[0] if test_set else None, production_label=label,
                   basis="; ".join(b for b in (basis, note) if b), candidate_label=candidate.label,
                   rejection=rejected.describe() if rejected else None,
                   earlier=None if force else earlier_verdict(store, model_id, test_set), signature=signature,
                   unreject_hint=unreject_hint)
        # a value on the record has its source on the record: the metrics artifact it was read from
        return replace(d, production_metrics_id=found[1].artifact_id) if found and d.production_value is not None \
            else d
    return store.record_promotion(model_id, gate, value=value, validation_passed=validation_passed,
                                  metric=policy.metric, aliases=(policy.candidate_alias, policy.production_alias),
                                  margin=policy.margin, flow_run_id=flow_run_id,
                                  test_set=test_set[1] if test_set else None, run_id=run_id)


def measured_with_source(store: LineageStore, model_artifact_id: int,
                         policy: GatePolicy) -> tuple[float, ArtifactRecord] | None:
    """(value, metrics artifact) of the newest finished measuring run of a model that recorded the metric."""
    found = [a for a in _measurements(store, model_artifact_id, policy, None)
             if a.metadata.get(policy.metric) is not None]
    return (found[-1].metadata[policy.metric], found[-1]) if found else None


def measured_on(store: LineageStore, model_artifact_id: int, dataset_digest: str,
                policy: GatePolicy) -> tuple[float, ArtifactRecord] | None:
    """(value, metrics artifact) of the newest finished measuring run of a model on the dataset with that digest."""
    found = [a for a in _measurements(store, model_artifact_id, policy, dataset_digest)
             if a.metadata.get(policy.metric) is not None]
    return (found[-1].metadata[policy.metric], found[-1]) if found else None


def _measurements(store: LineageStore, model_artifact_id: int, policy: GatePolicy,
                  dataset_digest: str | None) -> list[ArtifactRecord]:
    return evaluations(store, model_artifact_id, dataset_digest, job_type=policy.measured_by,
                       metrics_type=policy.metrics_type, test_set_type=policy.test_set_type)
