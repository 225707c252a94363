import sqlite3
import threading

import psycopg
import pytest

from prefect_wandb.refs import DigestMismatch, manifest, manifest_digest, verify_files
from prefect_wandb.store import LineageStore, NewArtifact


def _start(store, run_id, job="train"):
    store.start_run(run_id, job, config={"a": 1}, env={"git_commit": None}, flow_run_id="f1", run_group="g",
                    wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)


def _artifact(tmp_path, name, content):
    d = tmp_path / f"{name}-{content}"
    d.mkdir(exist_ok=True)
    (d / "x.bin").write_text(content)
    files = manifest(d)
    return NewArtifact(name=name, type="model", digest=manifest_digest(files), path=str(d), metadata={},
                       files=files)


def _in_threads(target, n: int) -> None:
    """`target(i)` for i in 0..n-1, each in a thread of its own, all started before any is joined."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_versions_edges_and_dedup(tmp_path, store_at):
    store = LineageStore(store_at)
    _start(store, "r1")
    [a] = store.finish_run("r1", used=[], produced=[_artifact(tmp_path, "m", "one")], summary={},
                           wandb_url=None, wandb_mode="offline")
    _start(store, "r2")
    [b] = store.finish_run("r2", used=[a.artifact_id], produced=[_artifact(tmp_path, "m", "two")], summary={},
                           wandb_url=None, wandb_mode="offline")
    assert (a.version, b.version) == (0, 1)
    _start(store, "r3")  # identical content to v0: no new version, a second producer edge
    [c] = store.finish_run("r3", used=[], produced=[_artifact(tmp_path, "m", "one")], summary={},
                           wandb_url=None, wandb_mode="offline")
    assert c.artifact_id == a.artifact_id and store.producers(a.artifact_id) == ["r1", "r3"]
    assert store.consumers(a.artifact_id) == ["r2"]
    assert [x.name for x in store.edges("r2").used] == ["m"]
    assert store.run("r2").status == "finished"
    assert store.artifacts_with_file(a.files[0].sha256)[0].artifact_id == a.artifact_id


def test_a_failed_commit_leaves_nothing_behind(tmp_path, store_at):
    store = LineageStore(store_at)
    _start(store, "r1")
    bad = _artifact(tmp_path, "m", "one")
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):  # an edge to an artifact id that does not exist
        store.finish_run("r1", used=[999], produced=[bad], summary={}, wandb_url=None, wandb_mode="offline")
    assert store.artifacts() == [] and store.run("r1").status == "running"
    store.fail_run("r1", used=[], error="boom")
    assert store.run("r1").status == "failed"


def test_concurrent_writers_do_not_corrupt_the_store(tmp_path, store_at):
    path = store_at
    LineageStore(path)
    errors = []

    def worker(i):
        try:
            store = LineageStore(path)
            for j in range(15):
                rid = f"r{i}-{j}"
                _start(store, rid)
                store.finish_run(rid, used=[], produced=[_artifact(tmp_path, "m", f"{i}-{j}")], summary={},
                                 wandb_url=None, wandb_mode="offline")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    _in_threads(worker, 4)
    assert not errors
    versions = sorted(a.version for a in LineageStore(path).artifacts())
    assert versions == list(range(60))  # every version number once: no lost or doubled write
    if not isinstance(path, str):
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_verify_files_names_the_changed_file(tmp_path):
    art = _artifact(tmp_path, "m", "one")
    verify_files(art.path, art.files)
    (tmp_path / "m-one" / "x.bin").write_text("onE")
    with pytest.raises(DigestMismatch, match="x.bin: sha256 .* does not match the recorded"):
        verify_files(art.path, art.files)


@pytest.mark.slow
def test_processes_creating_a_new_store_at_the_same_moment_all_get_it(tmp_path):
    """Two writers opening a store that does not exist yet, at the same moment, then writing at once (two flow runs
    starting on a new store). One of them used to fail with 'database is locked': its switch to WAL waited on a
    lock the other's WAL connections held, which SQLite's busy handler cannot resolve. Many rounds, as the
    interleaving that fails is one in a hundred or so."""
    import random
    import time

    for round_ in range(150):
        path, errors = tmp_path / f"new-{round_}.db", []

        def opener(i, path=path, errors=errors):
            time.sleep(random.random() * 0.005)
            try:
                store = LineageStore(path)
                for j in range(2):
                    _start(store, f"r{i}-{j}")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        _in_threads(opener, 2)
        assert errors == [], f"round {round_}"
        assert len(LineageStore(path).runs()) == 4


def _other_host_run(store, run_id, lease):
    """A running run recorded by a process on another host (whose /proc this one cannot read), its lease `lease`."""
    from sqlalchemy import update

    from prefect_wandb import tables

    store.start_run(run_id, "train", config={}, env={"process": {"pid": 1, "host": "another-host", "start": "1"}},
                    flow_run_id="f-other", run_group=None, wandb_mode="offline", wandb_dir=None, wandb_project="p",
                    wandb_entity=None)
    with store.transaction() as con:
        con.execute(update(tables.runs).where(tables.runs.c.run_id == run_id).values(lease_expires_at=lease))


def test_another_host_s_run_is_failed_once_its_lease_expires_and_a_renewed_one_is_not(store_at):
    from prefect_wandb.environment import process_gone
    from prefect_wandb.records import lease_until

    store = LineageStore(store_at)
    _other_host_run(store, "expired", lease_until(-1))
    _other_host_run(store, "renewed", lease_until(-1))
    _other_host_run(store, "alive", lease_until())
    _other_host_run(store, "old-record", None)  # written before leases: never judged from another host
    store.renew_lease("renewed")
    assert store.fail_dead_runs(process_gone) == ["expired"]
    run = store.run("expired")
    assert run.status == "failed" and run.error.startswith("lease expired: pid 1 on another-host stopped renewing")
    assert {r.run_id: r.status for r in store.runs()} == {"expired": "failed", "renewed": "running",
                                                          "alive": "running", "old-record": "running"}


def test_another_host_s_hold_is_dropped_once_its_lease_expires_unless_renewed(tmp_path, store_at):
    from sqlalchemy import update

    from prefect_wandb import holds, tables
    from prefect_wandb.environment import process_gone
    from prefect_wandb.records import lease_until

    store = LineageStore(store_at)
    _start(store, "r1")
    [a] = store.finish_run("r1", used=[], produced=[_artifact(tmp_path, "m", "one")], summary={}, wandb_url=None,
                           wandb_mode="offline")
    for flow in ("f-gone", "f-renewed", "f-here"):
        holds.hold(store, flow, a.artifact_id)
    with store.transaction() as con:  # the first two were taken on another host, and their leases ran out
        con.execute(update(tables.holds).where(tables.holds.c.flow_run_id != "f-here").values(
            process_json='{"host": "another-host", "pid": 1, "start": "1"}', lease_expires_at=lease_until(-1)))
    store.renew_lease(flow_run_id="f-renewed")  # a stage of that flow run renewed them
    assert holds.expire(store, process_gone) == ["f-gone"]
    assert holds.held(store) == {a.artifact_id: ["f-renewed", "f-here"]}


def test_a_stage_s_heartbeat_renews_its_lease_until_stopped(monkeypatch):
    import time

    from prefect_wandb import records, stage

    calls = []

    class Store:
        def renew_lease(self, run_id, flow_run_id):
            calls.append((run_id, flow_run_id))
            if len(calls) == 2:
                raise RuntimeError("the store is gone for a moment")  # logged, and tried again

    monkeypatch.setattr(records, "LEASE_S", 0.2)  # the beat reads it each time, as the lease does
    stop = stage._heartbeat(Store(), "r1", "f1")
    time.sleep(0.5)
    stop.set()
    n = len(calls)
    assert n >= 3 and set(calls) == {("r1", "f1")}
    time.sleep(0.2)
    assert len(calls) == n  # stopped
