"""`rollback` and `unreject`: an operator moves production back, and lets the gate consider a rejected model again.

Both are recorded as decisions in the lineage store (who asked, why); online, the W&B alias follows the store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket

from prefect_wandb import rollback as RB
from prefect_wandb.cli.args import Parents, add_command, err, identify_target, open_store, program
from prefect_wandb.exit_codes import Exit

PRODUCTION, CANDIDATE = "production", "candidate"  # the aliases a rollback moves (the gate's defaults)

ROLLBACK_EPILOG = """\
The model rolled back from is marked rejected (with the reason): the promotion gate keeps it candidate, also when
the sweep or run that made it runs again, until `unreject REF`. The candidate alias, when it is on the model rolled
back from, moves to the rollback's target with production (elsewhere it stays).

0 production moved (or --dry-run: it would move); 7 REFUSED (the target failed validation, no longer verifies, or
was deleted by gc); 4 no production model, no previous one, or --to names no recorded model; 5 online and the
W&B alias could not be moved (the decision is recorded; `sync` retries it).
"""
UNREJECT_EPILOG = """\
Only the rejection ends: production does not move. The next run or sweep that makes this model again takes it to
the gate, which compares it with production as any candidate (a candidate verdict of the gate itself on the same
test set stands until a run with --force).

0 done; 4 no such model, or it is not rejected; 2 usage; 6 the lineage store is damaged.
"""

def add_parsers(sub, parents: Parents) -> None:
    common = [parents.store, parents.json]
    b = add_command(sub, "rollback", parents=common, epilog=ROLLBACK_EPILOG, help="move production back to the "
                    "previous production model (or --to a validated one), recorded as a promotion decision")
    b.add_argument("--to", metavar="REF", help="the model to make production (NAME:v2, a model file); "
                   "default: the production model before the current one")
    name = program().model_name
    b.add_argument("--name", default=name, required=name is None,
                   help="the model's artifact name" + (" (default: %(default)s)" if name else ""))
    b.add_argument("--reason", default="", help="why, recorded with the decision")
    b.add_argument("--requested-by", default=None, help="who or what asked (default: user@host)")
    b.add_argument("--wandb-mode", choices=["auto", "online", "offline"], default="auto",
                   help="online: move the W&B alias now; offline: leave it to `sync` "
                   "(auto: online when a W&B API key is configured)")
    b.add_argument("--dry-run", action="store_true", help="say what would happen; record nothing")
    b.set_defaults(handler=rollback_main)
    u = add_command(sub, "unreject", parents=common, epilog=UNREJECT_EPILOG, help="let the promotion gate consider "
                    "a model again that a rollback rejected")
    u.add_argument("target", metavar="REF", help="the rejected model (NAME:v5, a model file)")
    u.add_argument("--reason", default="", help="why, recorded with it")
    u.add_argument("--requested-by", default=None, help="who or what asked (default: user@host)")
    u.set_defaults(handler=unreject_main)


# --------------------------------------------------------------------------------------------- rollback


def _requested_by(ns, command: str = "rollback") -> str:
    if ns.requested_by:
        return ns.requested_by
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} ({program().prog} {command})"


def rollback_main(ns: argparse.Namespace, backend=None) -> int:
    store = open_store(ns.lineage_db, "rollback", readonly=ns.dry_run)  # a dry run writes nothing
    if isinstance(store, Exit):
        return store
    current, previous = RB.previous_production(store, ns.name)
    if current is None:
        err("rollback", f"there is no production {ns.name} model to roll back")
        return Exit.NOT_FOUND
    if ns.to:
        recs, code = identify_target(store, ns.to, "rollback")
        if recs is None:
            return code
        target = recs[0]
    elif previous is None:
        err("rollback", f"production {current.label} has no previous production model; give --to REF")
        return Exit.NOT_FOUND
    else:
        target = previous
    result = {"name": ns.name, "from": current.label, "to": target.label, "dry_run": ns.dry_run}
    if target.artifact_id == current.artifact_id:
        err("rollback", f"{target.label} is already production")
        return Exit.USAGE
    problems = RB.refusals(store, target, store.deletions())
    if problems:
        result.update(status="refused", refusals=problems)
        _rollback_out(ns, result)
        err("rollback", f"REFUSED {target.label}: {'; '.join(problems)}")
        return Exit.REFUSED
    requested_by = _requested_by(ns)
    reason = (f"rollback from {current.label} to {target.label}, requested by {requested_by}"
              + (f": {ns.reason}" if ns.reason else ""))
    result.update(reason=reason, requested_by=requested_by, rejected=current.label)
    candidate = store.alias(ns.name, CANDIDATE)
    if candidate is not None and candidate.artifact_id == current.artifact_id:
        result["candidate"] = target.label  # a rejected model is nobody's candidate: it follows production
    if ns.dry_run:
        result["status"] = "would roll back"
        _rollback_out(ns, result)
        return Exit.OK
    decision = store.record_rollback(target.artifact_id, reason=reason, requested_by=requested_by,
                                     alias=PRODUCTION, candidate=CANDIDATE)
    result.update(status="rolled back", promotion_id=decision.promotion_id, wandb=f"pending `{program().prog} sync`")
    code = Exit.OK
    if _online(ns.wandb_mode):
        try:
            _move_alias_online(store, target, decision, backend)
            result["wandb"] = f"{' and '.join(decision.aliases)} alias{'es' if len(decision.aliases) > 1 else ''} moved"
        except Exception as e:  # recorded either way; sync applies it later
            result["wandb"] = f"failed ({type(e).__name__}: {e}); `{program().prog} sync` applies it later"
            code = Exit.WANDB_UNAVAILABLE
    _rollback_out(ns, result)
    return code


def _online(mode: str) -> bool:
    if mode == "offline":
        return False
    if mode == "online":
        return True
    from prefect_wandb.wandb.credentials import has_api_key

    return has_api_key()


def _move_alias_online(store, target, decision, backend=None) -> None:
    """The decision's aliases (production, and candidate when it moved) in W&B where the store has them now
    (`follow_store`: a flow may have promoted since)."""
    from prefect_wandb.alias_sync import follow_store
    from prefect_wandb.refs import wandb_ref
    from prefect_wandb.wandb.client import WandbClient

    backend = backend or WandbClient()
    entity = backend.check()

    def move(rec, aliases: list[str]) -> bool:
        run = store.run(rec.producer_run_id)
        backend.add_aliases(wandb_ref((run.wandb_entity if run else None) or entity,
                                      (run.wandb_project if run else None) or "", rec.name, rec.digest), aliases)
        return True
    follow_store(store, target.name, decision.aliases, move)  # production, and candidate when it moved too
    store.mark_promotion_applied(decision.promotion_id)


def _rollback_out(ns, result: dict) -> None:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(f"{result['status'].upper()}: production {result['name']} {result['from']} -> {result['to']}")
    for p in result.get("refusals", []):
        print(f"  refused: {p}")
    if result.get("reason"):
        print(f"  reason: {result['reason']}")
    if result.get("rejected"):
        print(f"  {result['rejected']} {'would be' if result.get('dry_run') else 'is'} rejected: the promotion gate "
              f"keeps it candidate until `{program().prog} unreject {result['rejected']}`")
    if result.get("candidate"):
        print(f"  candidate {'would move' if result.get('dry_run') else 'moved'} from {result['rejected']} to "
              f"{result['candidate']} too")
    if result.get("wandb"):
        print(f"  W&B: {result['wandb']}")


# --------------------------------------------------------------------------------------------- unreject


def unreject_main(ns: argparse.Namespace) -> int:
    from prefect_wandb import rejections

    store = open_store(ns.lineage_db, "unreject", readonly=False)
    if isinstance(store, Exit):
        return store
    recs, code = identify_target(store, ns.target, "unreject")
    if recs is None:
        return code
    model = recs[0]
    requested_by = _requested_by(ns, "unreject")
    lifted = rejections.unreject(store, model.artifact_id, reason=ns.reason or "no reason given",
                                 requested_by=requested_by) if model.type == "model" else None
    if lifted is None:
        err("unreject", f"{model.label} is not rejected" if model.type == "model" else
            f"{model.label} is a {model.type}, not a model")
        return Exit.NOT_FOUND
    result = {"model": model.label, "status": "unrejected", "was": lifted.describe(), "requested_by": requested_by,
              "reason": ns.reason}
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"UNREJECTED {model.label}: the promotion gate considers it again (it was {lifted.describe()})")
    return Exit.OK
