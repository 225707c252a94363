"""The journal a worker's stages write instead of the lineage store, and its commit by the store's one writer."""

import pickle

from prefect_wandb.journal import JournalStore, commit_journal
from prefect_wandb.store import FileRecord, LineageStore, NewArtifact


def _art(name, type, digest, tmp_path):
    return NewArtifact(name=name, type=type, digest=digest, path=str(tmp_path / digest[:16]), metadata={"m": digest},
                       files=(FileRecord("f.bin", digest, 3),))


def _start(store, run_id, job):
    store.start_run(run_id, job, config={}, env={"process": {"pid": 1}}, flow_run_id="fr", run_group="g",
                    wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)


def test_a_journal_replays_in_order_with_its_made_up_ids_mapped_to_the_stores(tmp_path, store_at):
    store = LineageStore(store_at)
    _start(store, "prep", "prepare-data")
    [dataset] = store.finish_run("prep", used=[], produced=[_art("mnist", "dataset", "d" * 64, tmp_path)],
                                 summary={}, wandb_url=None, wandb_mode="offline")
    _start(store, "old-train", "train")  # an earlier sweep already holds this content: no duplicate
    [old_model] = store.finish_run("old-train", used=[dataset.artifact_id],
                                   produced=[_art("convnet", "model", "a" * 64, tmp_path)], summary={},
                                   wandb_url=None, wandb_mode="offline")

    journal = JournalStore(str(store.path), known=[dataset])
    assert journal.find_artifact("mnist", dataset.digest) == dataset and journal.fail_dead_runs(None) == []
    journal.start_run("t1", "train", config={"x": 1}, env={"seed": 0}, flow_run_id="fr", run_group="g",
                      wandb_mode="offline", wandb_dir="/w", wandb_project="p", wandb_entity=None)
    [model] = journal.finish_run("t1", used=[dataset.artifact_id], summary={"s": 1}, wandb_url=None,
                                 wandb_mode="offline", produced=[_art("convnet", "model", "b" * 64, tmp_path)])
    assert model.artifact_id < 0 and journal.find_artifact("convnet", "b" * 64) == model
    journal.start_run("e1", "evaluate", config={}, env={}, flow_run_id="fr", run_group="g", wandb_mode="offline",
                      wandb_dir="/w", wandb_project="p", wandb_entity=None)
    journal.finish_run("e1", used=[model.artifact_id, dataset.artifact_id], summary={}, wandb_url=None,
                       wandb_mode="offline", produced=[_art("convnet-metrics", "metrics", "c" * 64, tmp_path)])
    journal.start_run("t2", "train", config={}, env={}, flow_run_id="fr", run_group="g", wandb_mode="offline",
                      wandb_dir="/w", wandb_project="p", wandb_entity=None)
    [same] = journal.finish_run("t2", used=[dataset.artifact_id], summary={}, wandb_url=None, wandb_mode="offline",
                                produced=[_art("convnet", "model", "a" * 64, tmp_path)])
    journal.start_run("e2", "evaluate", config={}, env={}, flow_run_id="fr", run_group="g", wandb_mode="offline",
                      wandb_dir="/w", wandb_project="p", wandb_entity=None)
    journal.fail_run("e2", used=[same.artifact_id], error="RuntimeError: boom")
    assert store.runs() and len(store.runs()) == 2  # nothing reached the store yet

    entries = pickle.loads(pickle.dumps(journal.entries))  # what crosses the wire from the worker
    committed = commit_journal(store, entries)

    runs = {r.run_id: r for r in store.runs()}
    assert {k: v.status for k, v in runs.items()} == {"prep": "finished", "old-train": "finished",
                                                         "t1": "finished", "e1": "finished", "t2": "finished",
                                                         "e2": "failed"}
    assert runs["t1"].env["started_at_worker"] and runs["e2"].error == "RuntimeError: boom"
    new_model = committed[("convnet", "b" * 64)]
    assert new_model.artifact_id > 0 and new_model.version == 1
    assert {a.artifact_id for a in store.edges("e1").used} == {new_model.artifact_id, dataset.artifact_id}
    assert committed[("convnet", "a" * 64)].artifact_id == old_model.artifact_id  # same content, same version
    assert [a.artifact_id for a in store.edges("e2").used] == [old_model.artifact_id]
    assert len(store.artifacts("model")) == 2


def test_a_committed_run_keeps_the_times_it_ran_on_the_worker_not_the_commits(tmp_path, store_at):
    import time

    store = LineageStore(store_at)
    journal = JournalStore(str(store.path))
    journal.start_run("t1", "train", config={}, env={}, flow_run_id="fr", run_group="g", wandb_mode="offline",
                      wandb_dir="/w", wandb_project="p", wandb_entity=None)
    time.sleep(0.05)
    journal.finish_run("t1", used=[], summary={}, wandb_url=None, wandb_mode="offline",
                       produced=[_art("convnet", "model", "b" * 64, tmp_path)])
    journal.start_run("t2", "train", config={}, env={}, flow_run_id="fr", run_group="g", wandb_mode="offline",
                      wandb_dir="/w", wandb_project="p", wandb_entity=None)
    journal.fail_run("t2", used=[], error="boom")
    ran = [(e.run_id, e.kind, e.at) for e in journal.entries]
    time.sleep(0.3)  # the flow commits later (a trial takes its time; others are committed first)
    commit_journal(store, journal.entries)
    t1, t2 = store.run("t1"), store.run("t2")
    assert (t1.started_at, t1.finished_at) == (ran[0][2], ran[1][2]) and t1.started_at < t1.finished_at
    assert (t2.started_at, t2.finished_at) == (ran[2][2], ran[3][2])
