"""W&B's aliases end where the lineage store's do, when two decisions reach W&B in the other order than they
reached the store (two flows promoting at once; an offline decision synced after a later online one). Real
SQLite store and gate; W&B is the in-memory `RecordingWandb`, whose aliases move as W&B's do (one version per
alias and collection). The same race against the real SDK and the W&B stand-in is
`test_wandb_roundtrip.test_two_flows_online_at_once_...`, which cannot force the order."""

from __future__ import annotations

import pytest

from prefect_wandb.alias_sync import MAX_MOVES, AliasesMoving, follow_store
from prefect_wandb.recording import RecordingWandb
from prefect_wandb.refs import digest_alias, manifest, manifest_digest
from prefect_wandb.store import LineageStore, NewArtifact
from prefect_wandb.sync import artifact_ref, plan_sync, run_sync
from tests.test_promotion import _decide


def _models(tmp_path, n: int):
    """A store with `n` model versions, each made by an online run, and a W&B that holds each of them."""
    store, wb = LineageStore(tmp_path / "lineage.db"), RecordingWandb()
    recs = []
    for i in range(n):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "model.pt").write_text(f"weights {i}")
        files = manifest(d)
        store.start_run(f"r{i}", "train", config={}, env={}, flow_run_id=None, run_group=None, wandb_mode="online",
                        wandb_dir=None, wandb_project="mnist-lineage", wandb_entity=None)
        [rec] = store.finish_run(f"r{i}", used=[], produced=[NewArtifact("convnet", "model", manifest_digest(files),
                                 str(d), {}, files)], summary={}, wandb_url=None, wandb_mode="online")
        wb.runs.add(f"r{i}")
        wb.artifacts[f"convnet:{digest_alias(rec.digest)}"] = {"version": f"v{i}", "aliases": ["latest"],
                                                              "logged_by": f"r{i}", "used_by": [], "files": {}}
        recs.append(rec)
    return store, wb, recs


def _holder(wb: RecordingWandb, alias: str) -> str | None:
    [held] = [k for k, a in wb.artifacts.items() if alias in a["aliases"]] or [None]
    return held


def _key(rec) -> str:
    return f"convnet:{digest_alias(rec.digest)}"


def test_a_decision_that_reaches_wandb_last_leaves_the_alias_where_the_store_has_it(tmp_path):
    store, wb, (m0, m1) = _models(tmp_path, 2)

    def move(rec, aliases):
        wb.add_aliases(artifact_ref(store, rec), aliases)
        return True
    # flow A decides m0, then flow B decides m1 (the store's order): m1 is candidate
    _decide(store, m0.artifact_id, 0.9, {})
    _decide(store, m1.artifact_id, 0.9, {})
    assert store.alias("convnet", "candidate").artifact_id == m1.artifact_id
    # B reaches W&B first, then A: A's own move alone would leave W&B's candidate on m0
    move(m1, ["candidate"])
    assert follow_store(store, "convnet", ["candidate"], move, moved=m1)
    move(m0, ["candidate"])
    assert _holder(wb, "candidate") == _key(m0)
    # A then reads the store again, and moves it back where the store has it
    assert follow_store(store, "convnet", ["candidate"], move, moved=m0)
    assert _holder(wb, "candidate") == _key(m1)
    assert wb.calls[-1] == ("add_aliases", artifact_ref(store, m1), ("candidate",))


def test_sync_puts_an_offline_decisions_aliases_where_the_store_has_them_now(tmp_path):
    store, wb, (m0, m1) = _models(tmp_path, 2)
    # m0's promotion was never applied in W&B (recorded offline); m1's later one was (online)
    _decide(store, m0.artifact_id, 0.9, {})
    later = _decide(store, m1.artifact_id, 0.95, {m0.artifact_id: 0.9})
    assert later.decision == "promoted"
    wb.add_aliases(artifact_ref(store, m1), ["candidate", "production"])
    store.mark_promotion_applied(later.promotion_id)

    report = run_sync(store, plan_sync(store), wb)
    assert report.ok, report
    [step] = report.promotions
    assert step.artifact == m0.label and "where the store has it now" in step.detail, step
    # replaying m0's decision as it was would have moved both aliases back onto m0
    assert _holder(wb, "candidate") == _holder(wb, "production") == _key(m1)
    assert [p.wandb_applied_at is not None for p in store.promotions()] == [True, True]


def test_a_store_that_keeps_moving_the_alias_is_reported_not_followed_forever(tmp_path):
    store, wb, models = _models(tmp_path, 2)
    _decide(store, models[0].artifact_id, 0.9, {})

    def move(rec, aliases):  # each move in W&B is overtaken by a decision for the other model in the store
        other = models[1] if rec.artifact_id == models[0].artifact_id else models[0]
        _decide(store, other.artifact_id, 0.9, {})
        return True
    with pytest.raises(AliasesMoving, match=f"after each of {MAX_MOVES} moves"):
        follow_store(store, "convnet", ["candidate"], move)
