"""`move` (`prefect_wandb/move.py`, `prefect_wandb/cli/move.py`): an SQLite store and its artifacts folder, made by
real stages of the library's public API (two datasets, one of them deleted by gc, a model promoted to production),
moved to a real PostgreSQL database and a real S3 bucket (SeaweedFS): the same rows, ids, digests and files at the
target, paths rewritten to the content-addressed S3 URLs, `audit` of the production model from an empty cache
passes, a new stage on the target gets new ids; `--dry-run` changes nothing; a target that is not empty is refused;
the S3 server stopped mid-move commits nothing and a rerun completes; the source is never written; no password or
secret key in any output. Refusals at the door (a URL where a path is expected and the reverse, a live run in the
source) need no server. wandb offline.
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
from prefect_wandb.cli.exit_codes import Exit
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
        assert {k: [x.artifact_id for x in v] for k, v in dst.edges(run.run_id).items()} == \
               {k: [x.artifact_id for x in v] for k, v in src.edges(run.run_id).items()}
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
