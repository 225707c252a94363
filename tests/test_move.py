"""`move` (`prefect_wandb/move.py`, `prefect_wandb/cli/move.py`): an SQLite store and its artifacts folder, made by
real stages of the library's public API (two datasets, one of them deleted by gc, a model promoted to production),
moved to a real PostgreSQL database and a real S3 bucket (SeaweedFS): the same rows, ids, digests and files at the
target, paths rewritten to the content-addressed S3 URLs, `audit` of the production model from an empty cache
passes, a new stage on the target gets new ids; `--dry-run` changes nothing; a target that is not empty is refused;
the S3 server stopped mid-move commits nothing and a rerun completes; the source is never written; no password or
secret key in any output; a store from before Alembic keeps its gate's values and never has an id handed out twice;
a target filled by another writer after the door's check is refused at commit; the check at the new location names
each difference (exit 3 from the CLI); an unreachable target database, or one that refuses the schema, commits
nothing (exit 6). Refusals at the door (a URL where a path is expected and the reverse, a live run in the source, an
artifacts folder that is missing or not the versions') need no server. wandb offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from prefect_wandb import GatePolicy, LineageSettings, LineageStore, WandbSettings, promotion
from prefect_wandb.artifact_files import CACHE_ENV
from prefect_wandb.cli import main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.locations import StoreURL
from prefect_wandb.move import target_rows
from tests.helpers import fit_line, prepare_table, use_offline_wandb


def _tree_digest(*paths: Path) -> str:
    """The bytes and names of every file under `paths` (the source must not change)."""
    h = hashlib.sha256()
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file():
                h.update(str(p.relative_to(root.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _name_digest(ref) -> tuple[str, str]:
    return ref.name, ref.digest


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An SQLite store and its artifacts folder: dataset v0 (deleted by gc), dataset v1, model v0 made from it and
    promoted to production. Read-only for the tests (each copies it when it must)."""
    root = tmp_path_factory.mktemp("move-source")
    with pytest.MonkeyPatch.context() as mp:
        use_offline_wandb(mp, root / "wandb")
        settings = LineageSettings(store=root / "lineage.db", artifacts=root / "artifacts", code_root=root,
                                   wandb=WandbSettings(mode="offline", dir=root / "wandb"))
        store = LineageStore(settings.store)
        old = store.require_artifact(*_name_digest(prepare_table(settings, "x,y\n0,0\n")))
        data = prepare_table(settings, "x,y\n1,2\n3,4\n")
        model = store.require_artifact(*_name_digest(fit_line(settings, data)))
        promotion.promote(store, model.artifact_id, value=0.9, validation_passed=True, flow_run_id=None,
                          policy=GatePolicy(metric="accuracy", label="accuracy", margin=0.0))
        assert store.alias("line", "production").artifact_id == model.artifact_id
        assert store.delete_artifact(old.artifact_id, path=old.path, bytes=sum(f.size for f in old.files),
                                     reason="test", deleted_by="test", remove=lambda: shutil.rmtree(old.path))
    return {"root": root, "db": root / "lineage.db", "artifacts": root / "artifacts", "old": old, "data": data,
            "model": model}


def _copy(source, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the source store and folder (paths recorded inside stay the source's: its folder is given)."""
    db = tmp_path / "src" / "lineage.db"
    db.parent.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source['db']}{suffix}").exists():
            shutil.copy(f"{source['db']}{suffix}", f"{db}{suffix}")
    return db, source["artifacts"]


@pytest.fixture
def aws(s3, monkeypatch, tmp_path):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))  # every read at the target starts from nothing
    return s3


def _move(source, to_db: str, to_s3: str, *extra: str, db: Path | None = None) -> int:
    return main(["move", "--lineage-db", str(db or source["db"]), "--artifacts-dir", str(source["artifacts"]),
                 "--to-lineage-db", to_db, "--to-artifacts-dir", to_s3, *extra])


def _objects(s3, url: str) -> list[str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    c = s3.client()
    try:
        return [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    finally:
        c.close()


def test_move_copies_every_record_uploads_every_version_and_audit_passes_at_the_new_location(
        source, aws, postgres, postgres_db, s3_bucket, tmp_path, capsys, monkeypatch):
    to = f"{s3_bucket}/team"
    before = _tree_digest(source["db"], source["artifacts"])
    out = []

    # --dry-run: what would be copied and uploaded; nothing written (no table in the database, no object in S3)
    assert _move(source, postgres_db, to, "--dry-run", "--json") == Exit.OK
    got = capsys.readouterr()
    out.append(got.out + got.err)
    plan = json.loads(got.out)
    assert plan["status"] == "would move" and plan["rows"]["artifacts"] == 3 and plan["rows"]["runs"] == 3
    assert plan["upload"]["versions"] == 2 and plan["upload"]["bytes"] > 0 and plan["deleted_by_gc"] == 1
    assert target_rows(StoreURL(postgres_db)) == {} and _objects(aws, to) == []

    assert _move(source, postgres_db, to, "--json") == Exit.OK
    got = capsys.readouterr()
    out.append(got.out + got.err)
    result = json.loads(got.out)
    assert result["status"] == "moved" and result["check"] == {"versions": 3, "ok": True, "problems": []}
    assert result["uploaded"] == 2 and result["already_in_s3"] == 0
    assert "[2/2] uploaded: line:v0 -> s3://" in got.err  # a log line per version off a terminal

    src, dst = LineageStore(source["db"], readonly=True), LineageStore(postgres_db, readonly=True)
    assert [(r.run_id, r.status) for r in dst.runs()] == [(r.run_id, r.status) for r in src.runs()]
    pairs = list(zip(src.artifacts(), dst.artifacts(), strict=True))
    for a, b in pairs:
        assert (b.artifact_id, b.name, b.version, b.digest, b.files) == (a.artifact_id, a.name, a.version, a.digest,
                                                                         a.files)
        assert b.path == f"{to}/{a.type}/{a.name}/{a.digest[:16]}"
    for run in src.runs():
        moved, kept = dst.edges(run.run_id), src.edges(run.run_id)
        assert [x.artifact_id for x in moved.used] == [x.artifact_id for x in kept.used]
        assert [x.artifact_id for x in moved.produced] == [x.artifact_id for x in kept.produced]
    assert dst.alias("line", "production").artifact_id == source["model"].artifact_id
    assert [p.promotion_id for p in dst.promotions()] == [p.promotion_id for p in src.promotions()]
    assert set(dst.deletions()) == {source["old"].artifact_id}  # its record kept, nothing uploaded for it
    assert not any(f"/{source['old'].digest[:16]}/" in k for k in _objects(aws, to))
    assert len(_objects(aws, to)) == 3  # rows.csv + notes/source.txt, model.json
    assert _tree_digest(source["db"], source["artifacts"]) == before  # the source was only read

    # the check: an audit at the new location, from an empty cache
    assert main(["audit", "line:production", "--lineage-db", postgres_db, "--skip-raw-files"]) == Exit.OK
    got = capsys.readouterr()
    out.append(got.out + got.err)
    assert (tmp_path / "empty-cache").is_dir()  # it downloaded (and verified) there

    # the target is a working store: a new stage gets new ids (the sequences were set past the copied ones)
    use_offline_wandb(monkeypatch, tmp_path / "wandb")
    settings = LineageSettings(store=postgres_db, artifacts=to, code_root=tmp_path,
                               wandb=WandbSettings(mode="offline", dir=tmp_path / "wandb"))
    data = LineageStore(postgres_db).require_artifact(*_name_digest(prepare_table(settings, "x,y\n5,6\n")))
    assert data.artifact_id > max(a.artifact_id for a, _ in pairs) and data.version == 2
    got = capsys.readouterr()  # the stage's own output (wandb may say "Adding directory to artifact")
    out.append(got.out + got.err)

    # moving again into it: refused, one line
    assert _move(source, postgres_db, f"{s3_bucket}/other") == Exit.USAGE
    got = capsys.readouterr()
    out.append(got.out + got.err)
    assert got.err.count("\n") == 1 and "is not empty" in got.err and "a move goes into a fresh database" in got.err
    text = "".join(out)
    assert postgres.password not in text and aws.secret_key not in text


def test_the_s3_server_stopped_mid_move_commits_nothing_and_a_rerun_completes(
        source, aws, postgres, postgres_db, s3_bucket, capsys):
    import prefect_wandb.artifact_files as af

    to, puts = f"{s3_bucket}/team", []
    fs = af._fs()  # the process's filesystem, handed to every caller: patched for this test only
    put = fs.put_file

    def put_file(*a, **kw):  # the first version's two objects go through, the next one too, then the server is gone
        put(*a, **kw)
        puts.append(a[1])
        if len(puts) == 3 and aws.running:
            aws.stop()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fs, "put_file", put_file)
        mp.setattr(af, "_fs", lambda: fs)
        try:
            code = _move(source, postgres_db, to)
        finally:
            if not aws.running:
                aws.start()
    got = capsys.readouterr()
    assert code == Exit.FAILED and len(puts) == 3, puts
    line = got.err.strip().splitlines()[-1]
    assert line.startswith("prefect-wandb move: uploading s3://") and "nothing was committed" in line
    assert not any(target_rows(StoreURL(postgres_db)).values())  # no row (not even the schema's tables)

    assert _move(source, postgres_db, to) == Exit.OK  # what the operator reads
    got = capsys.readouterr()
    assert got.out.startswith(f"MOVED: {source['db']} + {source['artifacts']} -> ")
    assert "in S3: 2 (" in got.out and "already there 2" in got.out  # verified, not uploaded again
    assert "deleted by gc (record only): 1" in got.out and "check at the new location: OK, 3 versions" in got.out
    assert len(LineageStore(postgres_db, readonly=True).artifacts()) == 3
    assert postgres.password not in got.out + got.err


@pytest.mark.parametrize(("args", "says"), [
    (["--to-lineage-db", "/tmp/other.db", "--to-artifacts-dir", "s3://bucket-x/p"], "--to-lineage-db: "),
    (["--to-lineage-db", "s3://bucket-x/p", "--to-artifacts-dir", "s3://bucket-x/p"], "--to-lineage-db: "),
    (["--to-lineage-db", "postgresql+psycopg://u:hunter2@h/db", "--to-artifacts-dir", "/tmp/folder"],
     "--to-artifacts-dir: "),
    (["--to-lineage-db", "postgresql+psycopg://u:hunter2@h/db", "--to-artifacts-dir",
      "postgresql://u:hunter2@h/db"], "--to-artifacts-dir: "),
    (["--artifacts-dir", "s3://bucket-x/p", "--to-lineage-db", "postgresql+psycopg://u:hunter2@h/db",
      "--to-artifacts-dir", "s3://bucket-x/p"], "--artifacts-dir: "),
])
def test_a_url_where_a_path_is_expected_and_the_reverse_are_refused_in_one_line(source, args, says, capsys):
    assert main(["move", "--lineage-db", str(source["db"]), *args]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"prefect-wandb move: {says}") and err.count("\n") == 1 and "hunter2" not in err


def test_a_run_still_running_in_the_source_is_refused_and_one_whose_process_is_gone_is_not(
        source, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # no S3 server: the check fails at once
    db, _ = _copy(source, tmp_path)
    store = LineageStore(db)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    store.start_run("live-1", "fit", config={}, env={"process": me}, flow_run_id=None, run_group=None,
                    wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
    to = ["postgresql+psycopg://u:hunter2@127.0.0.1:1/db", "s3://bucket-x/p"]
    assert _move(source, *to, "--dry-run", db=db) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "still running in the source (live-1 (fit, pid" in err and "hunter2" not in err
    store.fail_run("live-1", used=[], error="ended")
    # the process of another 'running' run is gone: not a refusal (then the unreachable target is what stops it)
    store.start_run("dead-1", "fit", config={}, env={"process": {**me, "pid": 2 ** 22 + 7}}, flow_run_id=None,
                    run_group=None, wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
    code = _move(source, *to, "--dry-run", db=db)
    err = capsys.readouterr().err
    assert code != Exit.OK and "still running" not in err and "hunter2" not in err and err.count("\n") == 1


def test_a_source_written_to_during_the_move_is_not_committed_and_a_rerun_takes_the_new_rows(
        source, aws, postgres_db, s3_bucket, tmp_path, capsys, monkeypatch):
    import prefect_wandb.move as M

    db, _ = _copy(source, tmp_path)
    real = M.publish

    def publish_while_a_run_starts(*a, **kw):  # a writer the move's refusal of live runs could not see yet
        if not LineageStore(db).runs(flow_run_id="late"):
            store = LineageStore(db)
            store.start_run("late-1", "fit", config={}, env={}, flow_run_id="late", run_group=None,
                            wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
            store.fail_run("late-1", used=[], error="a test's")
        return real(*a, **kw)

    monkeypatch.setattr(M, "publish", publish_while_a_run_starts)
    assert _move(source, postgres_db, f"{s3_bucket}/team", db=db) == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was written to during the move" in err and "nothing was committed" in err
    assert not any(target_rows(StoreURL(postgres_db)).values())
    assert _move(source, postgres_db, f"{s3_bucket}/team", db=db) == Exit.OK
    capsys.readouterr()
    assert "late-1" in {r.run_id for r in LineageStore(postgres_db, readonly=True).runs()}


def test_the_pipeline_s_cli_has_move_with_its_own_store_default_and_name(tmp_path, capsys, monkeypatch):
    from mnist_pipeline.cli.main import main as pipeline_main

    monkeypatch.chdir(tmp_path)

    assert pipeline_main(["move", "--to-lineage-db", "postgresql+psycopg://u:hunter2@h/db", "--to-artifacts-dir",
                          "s3://bucket-x/p", "--dry-run"]) == Exit.USAGE  # no mnist-runs/lineage.db here
    err = capsys.readouterr().err
    assert err.startswith("mnist-pipeline move: no lineage store at ") and "mnist-runs/lineage.db" in err
    assert err.count("\n") == 1 and "hunter2" not in err


_NOWHERE = ["postgresql+psycopg://u:hunter2@127.0.0.1:1/db", "s3://bucket-x/p"]  # never reached by these refusals


def test_an_artifacts_folder_that_is_missing_or_not_the_one_the_versions_are_in_is_refused_before_s3(
        source, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # had it got as far as S3, S3 would be the error
    db, _ = _copy(source, tmp_path)
    args = ["move", "--lineage-db", str(db), "--to-lineage-db", _NOWHERE[0], "--to-artifacts-dir", _NOWHERE[1]]
    assert main(args) == Exit.USAGE  # no --artifacts-dir, and none beside the copy
    err = capsys.readouterr().err
    assert err == f"prefect-wandb move: no artifacts folder at {db.parent / 'artifacts'} (give --artifacts-dir)\n"

    (tmp_path / "elsewhere").mkdir()
    assert main([*args, "--artifacts-dir", str(tmp_path / "elsewhere")]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.startswith("prefect-wandb move: table:v0 is recorded at ") and err.count("\n") == 1, err
    assert f"not under the artifacts folder {tmp_path / 'elsewhere'}: give the --artifacts-dir" in err
    assert "hunter2" not in err


def test_a_running_run_whose_recorded_process_cannot_be_read_is_taken_for_alive(source, tmp_path):
    """A 'running' run whose env is not JSON (a hand-edited store): its process cannot be shown to be gone, so the
    move is refused as for a live one, naming it."""
    import sqlite3

    from prefect_wandb import move as M

    db, _ = _copy(source, tmp_path)
    LineageStore(db).start_run("odd-1", "fit", config={}, env={}, flow_run_id=None, run_group=None,
                               wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET env_json = '{not json' WHERE run_id = 'odd-1'")
    with pytest.raises(M.MoveRefused, match=r"^1 run is still running in the source \(odd-1 \(fit, pid None on "
                                            r"None\)\): let it finish or stop it"):
        M.plan(LineageStore(db, readonly=True), source["artifacts"], StoreURL(_NOWHERE[0]), _NOWHERE[1])


def test_a_store_from_before_the_gate_s_columns_were_renamed_moves_with_its_values_and_no_id_is_given_twice(
        postgres_db, tmp_path):
    """A store written before Alembic (opened read-only, as `move` does: never migrated) keeps its gate's values
    (`candidate_accuracy`, renamed `candidate_value` by revision 0002) at the target; the tables it lacks are empty
    there; and an id SQLite's AUTOINCREMENT handed out once (a promotion removed by hand) is not handed out again
    by PostgreSQL."""
    import sqlite3

    from prefect_wandb import move as M
    from tests.test_store_migrations import DDL_FC2AC42, _old_store

    db = _old_store(tmp_path, DDL_FC2AC42)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO promotions (artifact_id, decision, reason, validation_passed, margin, decided_at)"
                    " VALUES (2, 'candidate', 'by hand', 0, 0, 'now')")
        con.execute("DELETE FROM promotions WHERE reason = 'by hand'")
    src = LineageStore(db, readonly=True)
    assert [(p.promotion_id, p.candidate_value) for p in src.promotions()] == [(1, 0.97)]

    p = M.plan(src, tmp_path / "art", StoreURL(postgres_db), "s3://bucket-x/team")
    assert p.sequences == {"artifacts": 2, "promotions": 2}
    assert p.counts()["wandb_gaps"] == 0 and p.counts()["holds"] == 0 and p.counts()["runs"] == 3
    target = M.commit(p)
    assert [(r.promotion_id, r.candidate_value, r.margin) for r in target.promotions()] == [(1, 0.97, 0.002)]
    assert target.promotions()[0] == src.promotions()[0]
    assert [a.path for a in target.artifacts()] == [v.url for v in p.versions]
    # the next promotion at the target: past the highest id SQLite ever gave, not past the highest row only
    assert target.record_rollback(2, reason="test", requested_by="me").promotion_id == 3


def test_a_target_another_writer_filled_after_the_door_check_is_refused_at_commit_and_keeps_its_rows(
        source, postgres_db, tmp_path):
    from prefect_wandb import move as M

    p = M.plan(LineageStore(source["db"], readonly=True), source["artifacts"], StoreURL(postgres_db),
               "s3://bucket-x/team")
    assert M.not_empty(M.target_rows(StoreURL(postgres_db)), StoreURL(postgres_db)) is None  # the door's check
    other = LineageStore(postgres_db)  # another writer, meanwhile
    other.start_run("theirs", "fit", config={}, env={}, flow_run_id=None, run_group=None, wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)
    with pytest.raises(M.MoveRefused, match=r"is not empty \(1 runs\): a move goes into a fresh database$"):
        M.commit(p)
    assert [r.run_id for r in other.runs()] == ["theirs"] and other.artifacts() == []


def test_the_check_at_the_new_location_names_every_difference(source, aws, postgres_db, s3_bucket):
    """`check` after a move finds nothing; then each difference it exists for, made at the target by hand: an
    object gone from S3; then a version's rows gone (its record, files, edges, deletion), a record that is not the
    source's, one at another path."""
    import sqlalchemy as sa

    from prefect_wandb import move as M

    to = f"{s3_bucket}/team"
    p = M.plan(LineageStore(source["db"], readonly=True), source["artifacts"], StoreURL(postgres_db), to)
    assert M.upload(p) == (2, 0)
    target = M.commit(p)
    assert M.check(p, target) == []

    old, data, model = (LineageStore(source["db"], readonly=True).require_artifact(*_name_digest(source[k]))
                        for k in ("old", "data", "model"))
    m = next(v.url for v in p.versions if v.record.artifact_id == model.artifact_id)
    c = aws.client()
    try:
        c.delete_object(Bucket=s3_bucket[len("s3://"):], Key=f"{m[len(s3_bucket) + 1:]}/model.json")
    finally:
        c.close()
    assert M.check(p, target) == [f"{model.label}: {m}/model.json is missing"]

    engine = sa.create_engine(postgres_db)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE artifacts SET digest = :d WHERE artifact_id = :a"),
                         {"d": "e" * 64, "a": data.artifact_id})
            conn.execute(sa.text("UPDATE artifacts SET path = path || '-elsewhere' WHERE artifact_id = :a"),
                         {"a": model.artifact_id})
            for table in ("artifact_files", "edges", "deletions", "artifacts"):
                conn.execute(sa.text(f"DELETE FROM {table} WHERE artifact_id = :a"), {"a": old.artifact_id})
    finally:
        engine.dispose()
    assert M.check(p, target) == [
        "table artifacts: 2 rows at the target, 3 in the source",
        "table artifact_files: 3 rows at the target, 5 in the source",
        "table deletions: 0 rows at the target, 1 in the source",
        "table edges: 3 rows at the target, 4 in the source",
        f"{old.label}: no record at the target",
        f"{data.label}: the target's record differs from the source's (digest {'e' * 16}, source {data.digest[:16]})",
        f"{model.label}: recorded at {m}-elsewhere at the target, not {m}"]


def test_a_version_already_at_its_target_url_is_not_uploaded_and_the_check_names_its_missing_objects(
        source, aws, postgres_db, s3_bucket, tmp_path, capsys):
    """A source that recorded a version at the target's key already (a store that half-used it) but whose objects
    S3 does not hold: nothing to upload for it, the move commits, and the check says what is missing (exit 3).
    A 'running' run whose process is gone is copied as it is, and said so."""
    import sqlite3

    from prefect_wandb.artifact_files import version_url

    to = f"{s3_bucket}/team"
    db, _ = _copy(source, tmp_path)
    model = source["model"]
    at = version_url(to, "model", model.name, model.digest)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE artifacts SET path = ? WHERE name = ? AND digest = ?", (at, model.name, model.digest))
    LineageStore(db).start_run("dead-1", "fit", config={}, env={"process": {"pid": 2 ** 22 + 7,
                               "host": socket.gethostname()}}, flow_run_id=None, run_group=None,
                               wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)

    assert _move(source, postgres_db, to, "--dry-run", db=db) == Exit.OK
    out = capsys.readouterr().out
    assert out.startswith("WOULD MOVE: ") and "to upload: 1 (" in out
    assert "runs left 'running' by a process that is gone (copied as they are; `prefect-wandb gc --apply` marks " \
           "them failed): dead-1 (fit, pid 4194311" in out

    assert _move(source, postgres_db, to, db=db) == Exit.VERIFY_FAILED
    got = capsys.readouterr()
    assert "uploaded now 1, already there 0" in got.out and "check at the new location: FAILED, 3 versions" in got.out
    assert f"    line:v0: {at}/model.json is missing\n" in got.out and "from now on" not in got.out
    assert got.err.splitlines()[-1] == (f"prefect-wandb move: moved, but the check at {StoreURL(postgres_db)} found 1 "
                                        f"difference(s): line:v0: {at}/model.json is missing")
    assert LineageStore(postgres_db, readonly=True).run("dead-1").status == "running"  # copied as it was


def test_an_unreachable_target_database_is_one_line_and_nothing_is_uploaded(source, aws, s3_bucket, capsys):
    from tests.helpers import free_port

    to = f"{s3_bucket}/team"
    assert _move(source, f"postgresql+psycopg://u:hunter2@127.0.0.1:{free_port()}/db", to) == Exit.STORE
    err = capsys.readouterr().err
    assert err.startswith("prefect-wandb move: postgresql+psycopg://u:***@127.0.0.1:") and err.count("\n") == 1
    assert "cannot open the lineage store (connection failed" in err and "hunter2" not in err, err
    assert _objects(aws, to) == []


def test_a_target_database_that_refuses_the_schema_commits_nothing_and_says_so(
        source, aws, postgres, postgres_db, s3_bucket, capsys):
    """The target's user may connect but not create tables (a role without CREATE on the schema): the uploads are
    done, the commit fails in one line (exit 6), no table is made, and a rerun by its owner completes."""
    import secrets

    import sqlalchemy as sa

    role, password = f"r_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    admin = sa.create_engine(postgres_db, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        as_role = f"postgresql+psycopg://{role}:{password}@{postgres.host}:{postgres.port}/{postgres_db.rsplit('/', 1)[1]}"
        to = f"{s3_bucket}/team"
        assert _move(source, as_role, to) == Exit.STORE
        got = capsys.readouterr()
        last = got.err.splitlines()[-1]
        assert last.startswith(f"prefect-wandb move: postgresql+psycopg://{role}:***@") and password not in got.err
        assert last.endswith("cannot open the lineage store (permission denied for schema public); nothing was "
                             "committed")
        assert target_rows(StoreURL(postgres_db)) == {} and len(_objects(aws, to)) == 3
        assert _move(source, postgres_db, to) == Exit.OK  # its owner: what S3 holds is verified, not uploaded again
        assert "already there 2" in capsys.readouterr().out
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
