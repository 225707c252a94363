"""Which model `rollback` moves `production` back to, and whether it may (pure: reads the store).

The production history is replayed from the promotion decisions, as a stack: a promotion pushes its model, a
rollback pops back to its target. So after A, B and C were promoted, a rollback goes to B and a second one to A.
A target must have passed onnxruntime validation, and its model and ONNX files must still verify.
"""

from __future__ import annotations

from prefect_wandb.artifact_files import readable_folder
from prefect_wandb.refs import DigestMismatch, verify_files
from prefect_wandb.store import ArtifactRecord, DeletionRecord, LineageStore

ROLLBACK = "rollback"


def is_rollback(p) -> bool:
    return p.kind == ROLLBACK


def production_stack(promotions: list, artifact_name_of) -> dict[str, list[int]]:
    """name -> the stack of production model ids, oldest first, replayed from decisions in order."""
    stacks: dict[str, list[int]] = {}
    for p in promotions:
        if p.decision != "promoted":
            continue
        aid = p.artifact_id
        stack = stacks.setdefault(artifact_name_of(aid), [])
        if is_rollback(p) and aid in stack:
            while stack[-1] != aid:
                stack.pop()
        elif not stack or stack[-1] != aid:
            stack.append(aid)
    return stacks


def previous_production(store: LineageStore, name: str) -> tuple[ArtifactRecord | None, ArtifactRecord | None]:
    """(current production, the one before it) for model `name`; either may be None."""
    current = store.alias(name, "production")
    names: dict[int, str] = {}

    def name_of(aid: int) -> str:
        if aid not in names:
            names[aid] = store.artifact(aid).name
        return names[aid]

    stack = production_stack(store.promotions(), name_of).get(name, [])
    if current is not None:
        while stack and stack[-1] != current.artifact_id:  # an alias moved outside the decisions: trust the alias
            stack.pop()
    prev = stack[-2] if len(stack) >= 2 else None
    return current, (store.artifact(prev) if prev is not None else None)


def validations(store: LineageStore, model: ArtifactRecord) -> list[ArtifactRecord]:
    """The validation reports (artifacts of type 'validation') made from a model, oldest first."""
    out = []
    for run_id in store.consumers(model.artifact_id):
        for p in store.edges(run_id).produced:
            if p.type == "validation":
                out.append(p)
    return out


def derived_onnx(store: LineageStore, model: ArtifactRecord) -> list[ArtifactRecord]:
    out = []
    for run_id in store.consumers(model.artifact_id):
        out += [p for p in store.edges(run_id).produced if p.type == "onnx"]
    return out


def refusals(store: LineageStore, target: ArtifactRecord, deleted: dict[int, DeletionRecord] | None = None) -> list[str]:
    """Why `target` may not become production (empty: it may)."""
    deleted = deleted or {}
    out = []
    if target.type != "model":
        return [f"{target.label} is a {target.type}, not a model"]
    vals = validations(store, target)
    if not vals:  # no validation report of its own: the gate's record of its validation, if it saw the model
        gated = [p for p in store.promotions(target.artifact_id) if p.kind is None]
        if not gated:
            out.append(f"{target.label} has no validation on record (no validation report, never gated)")
        elif not gated[-1].validation_passed:
            out.append(f"{target.label} had not passed validation when the gate decided about it "
                       f"({gated[-1].decided_at})")
    elif not vals[-1].metadata.get("passed"):
        v = vals[-1].metadata
        out.append(f"{target.label} failed onnxruntime validation ({vals[-1].label}: max |diff| "
                   f"{v.get('max_abs_diff')}, argmax agreement {v.get('argmax_agreement')})")
    for rec in [target, *derived_onnx(store, target)]:
        if rec.artifact_id in deleted:
            out.append(f"{rec.label} was deleted by gc on {str(deleted[rec.artifact_id].deleted_at)[:10]}")
            continue
        try:
            verify_files(readable_folder(rec.path, rec.files), rec.files)
        except DigestMismatch as e:
            out.append(f"{rec.label} no longer verifies: {e}")
    return out
