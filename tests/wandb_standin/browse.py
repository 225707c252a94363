"""What a W&B user reads back about runs through the public API (`wandb.Api().runs(...)`, `run.history()`,
`run.scan_history()`), over the runs the stand-in holds: the runs filter (W&B's MongoDB-style `filters`), the
order, and a run's history as the file stream delivered it (rows at their offsets), by step range, by keys, sampled.

W&B's rules kept here: a filter names run fields (`name`, `displayName`/`display_name`, `group`, `jobType`,
`state`, `tags`, `host`, `createdAt`, `heartbeatAt`, `sweep`, `username`), config keys (`config.KEY`, also
`config.KEY.value`, nested `config.KEY.SUB`) and summary keys (`summary_metrics.KEY`), with the operators `$and`,
`$or`, `$nor`, `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$in`, `$nin`, `$exists`, `$regex`; a list field
(`tags`) equals a value it contains. A field or operator it does not know is a GraphQL error naming it, never a
silent match. History: rows in the order the file stream put them (by offset); `history(minStep, maxStep)` is
[minStep, maxStep), a `sampledHistory` spec's range [minStep, maxStep]; `samples` caps the rows (evenly spaced, the
first and last kept); a spec's keys select the rows that hold every key, and only those keys.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.wandb_standin.executor import GraphQLFailure

_ABSENT = object()
RUN_FIELDS = {"name": "name", "displayName": "displayName", "display_name": "displayName", "group": "group",
              "jobType": "jobType", "job_type": "jobType", "state": "state", "tags": "tags", "host": "host",
              "createdAt": "created", "created_at": "created", "heartbeatAt": "updated", "heartbeat_at": "updated",
              "sweep": "sweep", "sweepName": "sweep"}
ORDERS = {"created_at": "created", "createdAt": "created", "heartbeat_at": "updated", "heartbeatAt": "updated",
          "name": "name", "display_name": "displayName", "displayName": "displayName"}
DEFAULT_SAMPLES = 500


def _dig(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def run_value(r: dict, user: str, key: str) -> Any:
    """The value a filter or an order key names in run `r` (_ABSENT when the run has none)."""
    if key in RUN_FIELDS:
        v = r.get(RUN_FIELDS[key])
        return [] if key == "tags" and v is None else v
    if key == "username":
        return user
    head, _, rest = key.partition(".")
    if head == "config" and rest:
        name, *sub = rest.split(".")
        entry = r["config"].get(name, _ABSENT)
        if entry is _ABSENT:
            return _ABSENT
        value = entry.get("value") if isinstance(entry, dict) and "value" in entry else entry
        return _dig(value, sub[1:] if sub[:1] == ["value"] else sub)
    if head in ("summary_metrics", "summaryMetrics", "summary") and rest:
        return _dig(r["summary"], rest.split("."))
    raise GraphQLFailure(f"W&B stand-in: runs filter or order on {key!r} is not modelled")


def _eq(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, list) and not isinstance(b, list) and b in a)


def _cmp(a: Any, b: Any, op: str) -> bool:
    if a is _ABSENT or a is None or b is None:
        return False
    try:
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    except TypeError:
        return False


def _test(value: Any, cond: Any) -> bool:
    if not (isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond)):
        return value is not _ABSENT and _eq(value, cond)
    for op, arg in cond.items():
        if op == "$eq":
            ok = value is not _ABSENT and _eq(value, arg)
        elif op == "$ne":
            ok = value is _ABSENT or not _eq(value, arg)
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            ok = _cmp(value, arg, op)
        elif op == "$in":
            ok = value is not _ABSENT and any(_eq(value, x) for x in arg)
        elif op == "$nin":
            ok = value is _ABSENT or not any(_eq(value, x) for x in arg)
        elif op == "$exists":
            ok = (value is not _ABSENT and value is not None) == bool(arg)
        elif op == "$regex":
            ok = value is not _ABSENT and value is not None and re.search(arg, str(value)) is not None
        elif op == "$not":
            ok = not _test(value, arg)
        else:
            raise GraphQLFailure(f"W&B stand-in: runs filter operator {op!r} is not modelled")
        if not ok:
            return False
    return True


def matches(r: dict, user: str, flt: dict) -> bool:
    for key, cond in flt.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(cond, list):
                raise GraphQLFailure(f"W&B stand-in: {key} takes a list of filters")
            hits = [matches(r, user, c) for c in cond]
            ok = all(hits) if key == "$and" else any(hits) if key == "$or" else not any(hits)
        elif key.startswith("$"):
            raise GraphQLFailure(f"W&B stand-in: runs filter operator {key!r} is not modelled")
        else:
            ok = _test(run_value(r, user, key), cond)
        if not ok:
            return False
    return True


def select_runs(runs: list[dict], user: str, filters: str | dict | None, order: str | None) -> list[dict]:
    """The runs (in creation order) that `filters` (a JSONString, as the SDK sends it) selects, in `order`
    (`[+-]created_at`, `heartbeat_at`, `config.KEY.value`, `summary_metrics.KEY`; + ascending, the default)."""
    flt = json.loads(filters) if isinstance(filters, str) else filters or {}
    if not isinstance(flt, dict):
        raise GraphQLFailure("W&B stand-in: runs filters must be a JSON object")
    out = [r for r in runs if matches(r, user, flt)]
    if order:
        desc, key = order.startswith("-"), order.lstrip("+-")
        field = ORDERS.get(key)
        if field is None:
            run_value({"config": {}, "summary": {}}, user, key)  # an unknown order key is an error, as a filter
        pos = {id(r): i for i, r in enumerate(out)}

        def sort_key(r: dict) -> tuple:
            v = r.get(field) if field else run_value(r, user, key)
            missing = v is _ABSENT or v is None
            return (missing, "" if missing else v, pos[id(r)])

        present = sorted((r for r in out if not sort_key(r)[0]), key=sort_key, reverse=desc)
        out = present + [r for r in out if sort_key(r)[0]]  # runs without the key last, either way
    return out


# --------------------------------------------------------------------------------------------- history
def _sample(rows: list, samples: int | None) -> list:
    n = DEFAULT_SAMPLES if samples is None else int(samples)
    if n <= 0:
        return []
    if len(rows) <= n:
        return list(rows)
    if n == 1:
        return [rows[-1]]
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)]


def _in_range(row: dict, lo: int | None, hi: int | None, hi_included: bool = False) -> bool:
    step = row.get("_step")
    if lo is None and hi is None:
        return True
    if not isinstance(step, int | float):
        return False
    return (lo is None or step >= lo) and (hi is None or step < hi or (hi_included and step == hi))


def history(rows: list[dict], samples: int | None = None, min_step: int | None = None,
            max_step: int | None = None) -> list[str]:
    """`Run.history(samples, minStep, maxStep)`: the rows as JSON lines, [minStep, maxStep), at most `samples`."""
    return [json.dumps(h) for h in _sample([h for h in rows if _in_range(h, min_step, max_step)], samples)]


def sampled_history(rows: list[dict], spec: dict) -> list[dict]:
    """One spec of `Run.sampledHistory(specs)`: the rows holding every key of `spec["keys"]`, only those keys;
    a spec's step range is [minStep, maxStep], both included (wandb-core's scan asks for [0, 999], then [1000, 1999])."""
    keys = spec.get("keys") or []
    picked = [{k: h[k] for k in keys} for h in rows
              if all(k in h for k in keys) and _in_range(h, spec.get("minStep"), spec.get("maxStep"), True)]
    return _sample(picked, spec.get("samples"))


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return str(v.get("_type") or "map")
    return "list" if isinstance(v, list) else "nil"


def history_keys(rows: list[dict]) -> dict:
    """`Run.historyKeys`: each key with its value types counted, and the last step (-1 with no rows)."""
    keys: dict[str, dict[str, int]] = {}
    for h in rows:
        for k, v in h.items():
            counts = keys.setdefault(k, {})
            counts[_type_name(v)] = counts.get(_type_name(v), 0) + 1
    steps = [h["_step"] for h in rows if isinstance(h.get("_step"), int | float)]
    return {"lastStep": int(max(steps)) if steps else -1,
            "keys": {k: {"typeCounts": [{"type": t, "count": n} for t, n in sorted(c.items())]}
                     for k, c in sorted(keys.items())}}
