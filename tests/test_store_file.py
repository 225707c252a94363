"""The lineage store's file (`prefect_wandb/store_file.py`): read-only commands write nothing beside it
and read it from read-only media and a full disk; a damaged or truncated store is exit 6 in one line; a disk that
fills under the store is named. Real SQLite on real (tmpfs) file systems."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import main
from prefect_wandb.store import LineageStore
from tests.helpers import REPO, copy_sqlite, last_line, offline_run_env, run_argv, store_state, tmpfs


def _audit(db: Path, target: str, capsys, *more: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["audit", target, "--lineage-db", str(db), *more])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _copy_store(src: Path, dst: Path) -> Path:
    """A whole copy of a store (SQLite's backup), its -wal folded in, as a backup an auditor holds."""
    return copy_sqlite(src, dst)


# every read-only command, with the exit status it gives on the session's run (one production, no earlier one)
READ_ONLY_COMMANDS = [(["audit", "{onnx}"], 0), (["impact", "mnist:v0"], 0), (["sync", "--dry-run"], 0),
                      (["gc", "--artifacts-dir", "{art}"], 0), (["rollback", "--dry-run"], 4),
                      (["reproduce", "convnet-metrics:v0"], 0)]


@pytest.mark.parametrize("medium", ["read-only", "full"])
def test_read_only_commands_read_a_store_on_read_only_media_or_a_full_disk_and_write_nothing_beside_it(
        offline_run, tmp_path, capsys, medium):
    """An auditor's copy of the store on a read-only mount, or on a disk with no block left: SQLite cannot create
    the -shm file a WAL database needs, and used to answer 'unable to open database file' / 'disk I/O error' (exit
    6, 'damaged'). Every read-only command now reads it, and nothing appears beside it."""
    mount = tmp_path / "media"
    with tmpfs(mount, size="4m"):
        db = _copy_store(offline_run["db"], mount / "lineage.db")
        if medium == "read-only":
            import subprocess

            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        else:
            with contextlib.suppress(OSError), (mount / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        before = sorted(p.name for p in mount.iterdir())
        for argv, expected in READ_ONLY_COMMANDS:
            argv = [a.format(onnx=offline_run["onnx"], art=offline_run["base"] / "art") for a in argv]
            capsys.readouterr()
            rc = main([*argv, "--lineage-db", str(db)])
            err = capsys.readouterr().err
            assert rc == expected, (argv, rc, err)
            assert "not a readable lineage store" not in err, (argv, err)
        assert sorted(p.name for p in mount.iterdir()) == before  # no -wal, -shm or anything else
        assert LineageStore(db, readonly=True).runs() == offline_run["store"].runs()


def test_read_only_commands_never_write_the_store(tmp_path, capsys):
    from mnist_pipeline.cli.main import main
    from prefect_wandb.store import StoreError

    db = tmp_path / "lineage.db"
    LineageStore(db).start_run("r1", "prepare-data", config={}, env={}, flow_run_id=None, run_group=None,
                               wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = db.read_bytes()
    ro = LineageStore(db, readonly=True)
    assert [r.run_id for r in ro.runs()] == ["r1"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.fail_run("r1", used=[], error="x")
    rc, _, err = _audit(db, "convnet:production", capsys)
    assert rc in (2, 4) and "Traceback" not in err
    assert main(["sync", "--dry-run", "--lineage-db", str(db)]) == 0
    assert db.read_bytes() == before
    with pytest.raises(StoreError, match="no lineage store there"):
        LineageStore(tmp_path / "nothing.db", readonly=True)
    assert not (tmp_path / "nothing.db").exists()


def test_a_full_disk_under_the_store_is_one_line_naming_it(tmp_path):
    from prefect_wandb.storage import StorageError

    with tmpfs(tmp_path / "store", size="512k"):
        store = LineageStore(tmp_path / "store" / "lineage.db")
        filler = tmp_path / "store" / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with pytest.raises(StorageError, match=rf"^No space left on device while writing {tmp_path}/store/lineage.db$"):
            for i in range(200):
                store.start_run(f"r{i}", "train", config={"pad": "x" * 2000}, env={}, flow_run_id=None,
                                run_group=None, wandb_mode="offline", wandb_dir=None, wandb_project="p",
                                wandb_entity=None)
        filler.unlink()
        con = sqlite3.connect(tmp_path / "store" / "lineage.db")
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()


@pytest.fixture(scope="module")
def damaged_blobs(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of two damaged lineage.db files: an empty one, and a real store of 300 runs cut to half its size
    (a copy that stopped half-way). Made once for the module (300 committed runs take about a second)."""
    full = tmp_path_factory.mktemp("damaged") / "lineage.db"
    store = LineageStore(full)
    for i in range(300):
        store.start_run(f"r{i}", "train", config={"pad": "x" * 500}, env={}, flow_run_id=None, run_group=None,
                        wandb_mode="offline", wandb_dir=None, wandb_project="p", wandb_entity=None)
    con = sqlite3.connect(full)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"empty": b"", "half": full.read_bytes()[: full.stat().st_size // 2]}


def _damaged_stores(tmp_path: Path, blobs: dict[str, bytes]) -> dict[str, Path]:
    """Each damaged lineage.db in a folder of its own."""
    out = {}
    for kind, blob in blobs.items():
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "lineage.db").write_bytes(blob)
        out[kind] = tmp_path / kind / "lineage.db"
    return out


@pytest.mark.parametrize("argv", [["sync", "--dry-run"], ["sync"], ["sync", "--verify"], ["audit", "convnet:v0"],
                                  ["gc"]])
def test_a_damaged_store_is_exit_6_in_one_line_and_nothing_is_written_beside_it(tmp_path, capsys, monkeypatch, argv,
                                                                                damaged_blobs):
    from mnist_pipeline.cli.main import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # plain sync must say the store, not "no W&B key"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    for kind, db in _damaged_stores(tmp_path, damaged_blobs).items():
        before = db.read_bytes()
        capsys.readouterr()
        rc = main([*argv, "--lineage-db", str(db)])
        err = capsys.readouterr().err
        assert rc == 6, (kind, rc, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (kind, err)
        assert str(db) in err, err
        assert db.read_bytes() == before, kind  # no schema written into it
        assert sorted(p.name for p in db.parent.iterdir()) == ["lineage.db"], kind  # no -wal, -shm


@pytest.mark.slow
# full before the store exists; full part-way through the run (the new store's schema is written in one
# transaction, a smaller WAL than the statement-by-statement DDL before it: at 260k the tiny run fits now)
@pytest.mark.parametrize("size", ["160k", "230k"])
def test_a_run_with_its_store_on_a_full_disk_ends_with_the_disk_named_and_leaves_no_store_behind(
        prefect_server, tmp_path, size):
    db = tmp_path / "store" / "lineage.db"
    with tmpfs(tmp_path / "store", size=size):
        argv = [a if a != str(tmp_path / "lineage.db") else str(db) for a in run_argv(
            tmp_path, "--source", "synthetic", "--synthetic-train", "200", "--synthetic-test", "50", "--slice", "1",
            "--epochs", "1")]
        proc = subprocess.run(argv, cwd=REPO, env=offline_run_env(tmp_path), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        line = last_line(proc.stderr)
        assert line == f"mnist-pipeline: pipeline failed: StorageError: No space left on device while writing {db} " \
                       "(not retried: it would fail the same way)", line
        if db.exists():  # full part-way: what was recorded is whole, and no run is left 'running'
            assert db.stat().st_size > 0
            assert all(status != "running" for _, status, _ in store_state(db))
        else:
            assert sorted(p.name for p in db.parent.iterdir()) == []  # no 0-byte store, no -wal/-shm

