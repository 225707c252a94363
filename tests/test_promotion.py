"""Retrain only when something changed, and the promotion gate: real Prefect (test server), real wandb offline,
real SQLite; the race is run with real processes against one store."""

import multiprocessing

import pytest

from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
from prefect_wandb import GatePolicy
from prefect_wandb.promotion import decide
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import LineageStore, NewArtifact
from tests.helpers import tiny_config, write_mnist


def _cfg(tmp_path, src, **train):
    return tiny_config(tmp_path, src, train=train)


def _prefect_markdown(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return "\n".join(a.data for a in arts)


def test_unchanged_rerun_skips_changed_data_or_config_retrains_and_the_gate_keeps_the_better_model(
        prefect_server, wandb_offline, tiny_mnist, tmp_path):
    store = LineageStore(tmp_path / "lineage.db")
    # 1. a weak first model (tiny learning rate): validated, so promoted as the first production model
    weak = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist, learning_rate=1e-6)).to_dict()
    assert weak["promotion"]["decision"] == "promoted"
    v0 = store.alias("convnet", "production")

    # 2. the same data and config again, as the schedule would: skipped, reported, nothing new; the checkpoint
    #    a training killed -9 after its commit left (before it could discard it) goes: its model is on record
    from mnist_pipeline.checkpoint_files import checkpoint_path
    from mnist_pipeline.training import sidecar

    ckpt = checkpoint_path(_cfg(tmp_path, tiny_mnist, learning_rate=1e-6), store.artifacts("dataset")[0].ref())
    ckpt.write_bytes(b"weights")
    sidecar(ckpt).write_text("{}")
    state = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist, learning_rate=1e-6), return_state=True)
    skipped = state.result().to_dict()
    assert skipped["status"] == "skipped" and f"unchanged since production convnet:v{v0.version}" in skipped["reason"]
    assert [a.version for a in store.artifacts("model")] == [v0.version]
    assert not ckpt.exists() and not sidecar(ckpt).exists() and ckpt.parent.is_dir()
    assert "training skipped" in _prefect_markdown(state.state_details.flow_run_id)

    # 3. a changed config retrains; the better model wins the gate
    good = mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist, learning_rate=0.01, epochs=4)).to_dict()
    assert "training config changed" in good["reason"] and "learning_rate" in good["reason"]
    assert good["test_accuracy"] > weak["test_accuracy"]
    assert good["promotion"]["decision"] == "promoted"
    prod = store.alias("convnet", "production")
    assert prod.version == 1 and prod.digest == good["artifacts"]["model"]["digest"]

    # 4. changed data retrains too; a worse model stays candidate and production keeps its model
    changed = tmp_path / "changed"
    write_mnist(changed, n_train=100, n_test=40)
    worse = mnist_lineage_pipeline(config=_cfg(tmp_path, changed, learning_rate=1e-6)).to_dict()
    assert "dataset" in worse["reason"] and "is not mnist:v0" in worse["reason"]
    assert worse["promotion"]["decision"] == "candidate"
    assert store.alias("convnet", "production").version == 1
    assert store.alias("convnet", "candidate").digest == worse["artifacts"]["model"]["digest"]
    decisions = store.promotions()
    assert [d.decision for d in decisions] == ["promoted", "promoted", "candidate"]
    assert decisions[-1].production_value == pytest.approx(good["test_accuracy"])
    assert decisions[-1].candidate_value == pytest.approx(worse["test_accuracy"])
    # the previous production model keeps its history
    assert store.promotions(v0.artifact_id)[0].decision == "promoted"

    # 5. force retrains even when nothing changed
    forced = mnist_lineage_pipeline(config=_cfg(tmp_path, changed, learning_rate=1e-6).model_copy(update={"force": True})).to_dict()
    # ... and makes the very same model: same bytes, same digest, no new version (honest digests)
    assert forced["status"] == "completed" and len(store.artifacts("model")) == 3
    assert forced["artifacts"]["model"] == worse["artifacts"]["model"]
    assert len([r for r in store.runs() if r.job_type == "train"]) == 4


def _seed_store(path, tmp_path, n):
    store = LineageStore(path)
    ids = []
    for i in range(n + 1):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "model.pt").write_text(f"weights {i}")
        files = manifest(d)
        store.start_run(f"r{i}", "train", config={}, env={}, flow_run_id=None, run_group=None, wandb_mode="offline",
                        wandb_dir=None, wandb_project=None, wandb_entity=None)
        [rec] = store.finish_run(f"r{i}", used=[], produced=[NewArtifact("convnet", "model", manifest_digest(files),
                                 str(d), {}, files)], summary={}, wandb_url=None, wandb_mode="offline")
        ids.append(rec.artifact_id)
    return ids


def _decide(store, artifact_id, accuracy, accuracies):
    """The real gate, with production's accuracy looked up in `accuracies` (these models have no evaluation)."""
    def gate(production_id):
        return decide(candidate_id=artifact_id, value=accuracy, validation_passed=True, production_id=production_id,
                      production_value=accuracies.get(production_id), policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.01))
    return store.record_promotion(artifact_id, gate, value=accuracy, validation_passed=True, margin=0.01,
                                  flow_run_id=None)


def _race(path, artifact_id, barrier, accuracies):
    barrier.wait()
    _decide(LineageStore(path), artifact_id, 0.9, accuracies)


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_promotions_have_exactly_one_winner(tmp_path, round_, store_at):
    """Four processes (forked, each with its own connections) ask the gate at once: on SQLite and on PostgreSQL,
    the write lock makes exactly one of them the winner, and the others compare themselves with it."""
    path = store_at
    baseline, *candidates = _seed_store(path, tmp_path, 4)
    store = LineageStore(path)
    accuracies = {baseline: 0.8, **{c: 0.9 for c in candidates}}
    _decide(store, baseline, 0.8, accuracies)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(candidates))
    procs = [ctx.Process(target=_race, args=(path, c, barrier, accuracies)) for c in candidates]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    decisions = store.promotions()[1:]
    winners = [d for d in decisions if d.decision == "promoted"]
    assert len(decisions) == 4 and len(winners) == 1
    assert store.alias("convnet", "production").artifact_id == winners[0].artifact_id
    # every loser compared itself with the winner, not with the stale baseline
    assert all(d.production_artifact_id == winners[0].artifact_id for d in decisions if d not in winners)


# The gate as a decision table: (validation passed, candidate accuracy, production is: None / "self" / accuracy,
# margin) -> (decision, the start of its reason). Every row of `decide`'s docstring table has a case here.
GATE_TABLE = [
    (False, 0.99, None, 0.0, "candidate", "onnxruntime validation did not pass"),
    (False, 0.99, 0.5, 0.0, "candidate", "onnxruntime validation did not pass"),
    (True, None, None, 0.0, "candidate", "no test accuracy recorded"),
    (True, None, 0.5, 0.0, "candidate", "no test accuracy recorded"),
    (True, 0.7, "self", 0.0, "promoted", "already the production model"),
    (True, 0.7, None, 0.0, "promoted", "first validated model"),
    (True, 0.7, "unknown", 0.0, "promoted", "accuracy 0.7000 >= production nan"),
    (True, 0.7, 0.7, 0.0, "promoted", "accuracy 0.7000 >= production 0.7000 + margin 0.0000"),
    (True, 0.8, 0.7, 0.1, "promoted", "accuracy 0.8000 >= production 0.7000 + margin 0.1000"),
    (True, 0.79, 0.7, 0.1, "candidate", "accuracy 0.7900 < production 0.7000 + margin 0.1000"),
    (True, 0.6, 0.7, 0.0, "candidate", "accuracy 0.6000 < production 0.7000"),
]


@pytest.mark.parametrize("passed, acc, production, margin, decision, reason", GATE_TABLE)
def test_promotion_gate_decision_table(passed, acc, production, margin, decision, reason):
    candidate_id = 7
    production_id = {None: None, "self": candidate_id}.get(production, 3) if not isinstance(production, float) else 3
    production_accuracy = production if isinstance(production, float) else None
    got = decide(candidate_id=candidate_id, value=acc, validation_passed=passed, production_id=production_id,
                 production_value=production_accuracy, policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=margin))
    assert (got.decision, got.reason[: len(reason)]) == (decision, reason)
    assert got.production_value == production_accuracy
