"""W&B's aliases follow the lineage store's: the one rule every alias move in W&B obeys (promote, rollback, sync).

The store decides where `candidate` and `production` are (one transaction per decision); W&B is told afterwards, by
whichever process decided. Two flows promoting at once can reach W&B in the other order than they reached the
store, so a move never puts the alias on the version the caller decided about, but on the version the store says
holds it *now*, and reads the store again after the move: while the store names another version than the one just
moved, that one is moved too. Whichever process moves last read the store after the last decision, so W&B ends
where the store ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prefect_wandb.records import ArtifactRecord
from prefect_wandb.store import LineageStore

MAX_MOVES = 5  # per alias: more means the store is being moved faster than W&B can be told; `sync` ends it


class AliasesMoving(RuntimeError):
    """The store moved an alias again after each of `MAX_MOVES` moves in W&B."""


def follow_store(store: LineageStore, name: str, aliases: Sequence[str],
                 move: Callable[[ArtifactRecord, list[str]], bool], *, moved: ArtifactRecord | None = None) -> bool:
    """Put each of `aliases` of collection `name` in W&B where the store has it, by `move(record, aliases)` (one
    call per version; False: the move failed and was recorded; a raise propagates). `moved`: the version the
    caller has just given all of `aliases` in W&B itself. True when W&B was told, for every alias, what the store
    still says after the move."""
    last = {alias: moved.artifact_id if moved is not None else None for alias in aliases}
    for _ in range(MAX_MOVES):
        todo: dict[int, tuple[ArtifactRecord, list[str]]] = {}
        for alias in aliases:
            held = store.alias(name, alias)
            if held is not None and held.artifact_id != last[alias]:
                todo.setdefault(held.artifact_id, (held, []))[1].append(alias)
        if not todo:
            return True
        for rec, some in todo.values():
            if not move(rec, some):
                return False
            last.update(dict.fromkeys(some, rec.artifact_id))
    raise AliasesMoving(f"{name}:{', '.join(aliases)} moved in the lineage store after each of {MAX_MOVES} moves "
                        "in W&B; `sync` sets them where the store ends")
