"""The skip rule: retrain only if something that decides the model changed (no Prefect, no W&B, no SQL).

A model records, in its metadata, the `fingerprint` of what decides it (the slice of the config that means
"unchanged"); `skip_rule` is the decision table over the finished models, `compare_with_production` asks the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect_wandb import rejections
from prefect_wandb.store import LineageStore


@dataclass(frozen=True)
class ChangeCheck:
    changed: bool
    reason: str
    production: str | None  # "model:v3" when there is a production model
    model: str | None = None  # a finished model these inputs already made (production's, when unchanged)
    model_digest: str | None = None
    decided: str | None = None  # what was decided about `model`, when anything was: the run stops there

    @property
    def action(self) -> str:
        """What the flow does: 'train' (something changed), 'skip' (these inputs made production's model, or a
        model the gate or an operator decided about) or 'reuse' (they made a model no one decided about: gate it
        without training again). `force` is the flow's: it trains whatever this says."""
        if self.changed:
            return "train"
        return "skip" if self.decided or self.model == self.production else "reuse"


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
    # decided once, then sent back to the gate by an operator's `unreject`: what the record says, oldest first
    # ("promoted by the gate at ... (...); rejected by rollback at ... (...); unrejected by ops at ... (...)")
    reconsidered: str | None = None


def skip_rule(models: list[MadeModel], model_name: str, dataset_digest: str, dataset_label: str,
              fingerprint: dict) -> ChangeCheck:
    """Train, or not? `models`: the finished models of that name, oldest first. First matching row wins:

    | a finished model of these inputs (dataset digest + fingerprint) | production           | outcome         |
    |-----------------------------------------------------------------|----------------------|-----------------|
    | production's                                                    | -                    | skip            |
    | another, already decided (by the gate or an operator)           | any                  | skip, saying so |
    | another, decided, then unrejected (`reconsidered`)              | any                  | reuse: gate it  |
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
        if m.reconsidered:
            return ChangeCheck(False, f"{inputs} already made {m.label}, decided before and unrejected since "
                                      f"({m.reconsidered}): it goes to the gate again without retraining", label,
                               m.label, m.digest)
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


def made_models(store: LineageStore, model_name: str, *, model_type: str = "model", input_type: str = "dataset",
                production_alias: str = "production") -> list[MadeModel]:
    """The finished `model_type` artifacts of that name whose files gc has not deleted, as the skip rule sees them:
    each with the `input_type` artifact it was made from and the `fingerprint` its metadata records."""
    prod = store.alias(model_name, production_alias)
    deleted = store.deletions()
    out = []
    for a in store.artifacts(model_type):
        if a.name != model_name or a.artifact_id in deleted:
            continue
        used = a.inputs(input_type)
        decided = reconsidered = None
        rejected = rejections.current(store, a.artifact_id)
        is_prod = prod is not None and prod.artifact_id == a.artifact_id
        if rejected is not None:
            decided = rejected.describe()
        else:
            # an unreject lets the gate consider the model afresh: what it said while it was rejected is not the answer
            history = rejections.history(store, a.artifact_id)
            lifted = max((r.at for r in history if r.action == "unreject"), default="")
            gated = [p for p in store.promotions(a.artifact_id) if p.kind is None]
            verdicts = [p for p in gated if p.decided_at > lifted]
            if verdicts:
                decided = _verdict(verdicts[-1], is_prod)
            elif lifted:  # decided before, and sent back to the gate: say so, not "never decided"
                rejected_at = min((r.at for r in history if r.action == "reject"), default=lifted)
                before = [p for p in gated if p.decided_at < rejected_at]  # not the verdicts while it was rejected
                said = ([_verdict(before[-1], is_prod)] if before else []) + [
                    r.describe() if r.action == "reject" else
                    f"unrejected by {r.requested_by} at {r.at} ({r.reason})" for r in history]
                reconsidered = "; ".join(said)
        out.append(MadeModel(a.label, a.digest, used[0]["digest"] if used else None,
                             f"{used[0]['name']}:v{used[0]['version']}" if used else None,
                             a.metadata.get("fingerprint") or {}, is_prod, decided, reconsidered))
    return out


def _verdict(v, is_prod: bool) -> str:
    """The gate's decision `v` as the skip rule says it."""
    if v.decision == "candidate":
        return f"kept candidate by the gate at {v.decided_at}: {v.reason}"
    return f"promoted by the gate at {v.decided_at} ({v.reason})" + ("" if is_prod else ", since replaced as production")


def compare_with_production(store: LineageStore, model_name: str, dataset_digest: str, dataset_label: str,
                            fingerprint: dict, **kinds: str) -> ChangeCheck:
    """Has anything that decides the model changed since a finished model (production's or another) was made from
    these inputs? `kinds`: `made_models`' model_type, input_type and production_alias."""
    return skip_rule(made_models(store, model_name, **kinds), model_name, dataset_digest, dataset_label, fingerprint)
