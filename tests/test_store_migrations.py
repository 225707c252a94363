"""The lineage store's schema versions (Alembic, `prefect_wandb/migrations`): a store written before Alembic (the
hand-written SQLite schema of commit 796abb5, and an older one from before that code's ad-hoc migration) upgrades
in place and reads back the same; a new store lands at head; head and `tables.py` agree; a second open migrates
nothing. The old stores are made here from those releases' own DDL, copied verbatim, and rows written as they
wrote them (plain sqlite3), never by the code under test."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from prefect_wandb import migrations, schema
from prefect_wandb.audit import audit
from prefect_wandb.exit_codes import Exit
from prefect_wandb.layout import folder_name
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import LineageStore, StoreError

# prefect_wandb/schema.py at 796abb5 (SCHEMA), the store every release before Alembic left behind
DDL_796ABB5 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    job_type      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    flow_run_id   TEXT,
    run_group     TEXT,
    wandb_mode    TEXT,
    wandb_url     TEXT,
    wandb_dir     TEXT,
    wandb_project TEXT,
    wandb_entity  TEXT,
    config_json   TEXT NOT NULL,
    env_json      TEXT NOT NULL,
    summary_json  TEXT NOT NULL DEFAULT '{}',
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    error         TEXT
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    type            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    digest          TEXT NOT NULL,
    path            TEXT NOT NULL,
    metadata_json   TEXT NOT NULL,
    producer_run_id TEXT NOT NULL REFERENCES runs(run_id),
    created_at      TEXT NOT NULL,
    UNIQUE (name, digest),
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS artifact_files (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    relpath     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (artifact_id, relpath)
);
CREATE TABLE IF NOT EXISTS edges (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    direction   TEXT NOT NULL CHECK (direction IN ('used', 'produced')),
    PRIMARY KEY (run_id, artifact_id, direction)
);
CREATE TABLE IF NOT EXISTS aliases (
    name        TEXT NOT NULL,
    alias       TEXT NOT NULL,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    set_at      TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS promotions (
    promotion_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id            INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    decision               TEXT NOT NULL CHECK (decision IN ('promoted', 'candidate')),
    reason                 TEXT NOT NULL,
    candidate_accuracy     REAL,
    validation_passed      INTEGER NOT NULL,
    production_artifact_id INTEGER REFERENCES artifacts(artifact_id),
    production_accuracy    REAL,
    margin                 REAL NOT NULL,
    flow_run_id            TEXT,
    decided_at             TEXT NOT NULL,
    wandb_applied_at       TEXT
);
CREATE INDEX IF NOT EXISTS files_by_sha ON artifact_files(sha256);
CREATE INDEX IF NOT EXISTS edges_by_artifact ON edges(artifact_id, direction);
CREATE TABLE IF NOT EXISTS wandb_gaps (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    action      TEXT NOT NULL CHECK (action IN ('upload', 'use', 'aliases')),
    ref         TEXT NOT NULL,
    call        TEXT NOT NULL,
    error       TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, action, ref)
);
CREATE TABLE IF NOT EXISTS deletions (
    artifact_id INTEGER PRIMARY KEY REFERENCES artifacts(artifact_id),
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    deleted_by  TEXT NOT NULL,
    deleted_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    flow_run_id  TEXT NOT NULL,
    artifact_id  INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    process_json TEXT NOT NULL,
    taken_at     TEXT NOT NULL,
    PRIMARY KEY (flow_run_id, artifact_id)
);
CREATE TABLE IF NOT EXISTS rejections (
    rejection_id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id  INTEGER NOT NULL REFERENCES artifacts(artifact_id),
    action       TEXT NOT NULL CHECK (action IN ('reject', 'unreject')),
    source       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_log (
    run_id  TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('upload', 'use')),
    ref     TEXT NOT NULL,
    detail  TEXT,
    done_at TEXT NOT NULL,
    PRIMARY KEY (run_id, action, ref)
);
"""
# ...and the ad-hoc migration (schema.upgrade at 796abb5) every writable open of it ran
ADHOC_796ABB5 = ("ALTER TABLE promotions ADD COLUMN kind TEXT; ALTER TABLE promotions ADD COLUMN requested_by TEXT;"
                 " ALTER TABLE promotions ADD COLUMN test_set TEXT;")
# before that migration (the store of fc2ac42^): six tables, promotions without kind/requested_by/test_set
_TABLES = DDL_796ABB5.split("CREATE TABLE IF NOT EXISTS ")
DDL_FC2AC42 = "".join("CREATE TABLE IF NOT EXISTS " + t for t in _TABLES[1:] if t.split()[0] in
                      {"runs", "artifacts", "artifact_files", "edges", "aliases", "promotions", "sync_log"})

T0 = "2026-01-0{}T10:00:00.000+00:00"


def _folder(base: Path, name: str, content: str) -> tuple[str, str, tuple]:
    """An artifact's folder as the stages lay it out (art/<name>/<digest prefix>/), with one file."""
    d = base / "art" / name / "new"
    d.mkdir(parents=True)
    (d / f"{name}.bin").write_text(content)
    files = manifest(d)
    digest = manifest_digest(files)
    return str(d.rename(d.with_name(folder_name(digest)))), digest, files


def _old_store(tmp_path: Path, ddl: str) -> Path:
    """A store as a release before Alembic wrote it: a prepare-data run, a training run that used its dataset and
    made a model, a failed run, the model promoted, and what sync had done (plus a W&B gap, a rejection, a hold
    and a gc deletion where the release had those tables)."""
    db = tmp_path / "lineage.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(ddl)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for i, (run_id, job, status, error) in enumerate([("prep", "prepare-data", "finished", None),
                                                      ("train", "train", "finished", None),
                                                      ("boom", "train", "failed", "RuntimeError: boom")], 1):
        con.execute("INSERT INTO runs VALUES (?, ?, ?, 'flow-1', 'g', 'offline', NULL, '/w', 'p', NULL, ?, ?, ?, ?,"
                    " ?, ?)", (run_id, job, status, f'{{"seed": {i}}}', '{"process": {"pid": 1}}',
                               f'{{"step": {i}}}', T0.format(i), T0.format(i + 1), error))
    ids, inputs = {}, []
    for run_id, name, type_ in [("prep", "mnist", "dataset"), ("train", "convnet", "model")]:
        path, digest, files = _folder(tmp_path, name, f"{name} bytes")
        meta = {"inputs": inputs, "files": {f.relpath: f.sha256 for f in files}}
        cur = con.execute("INSERT INTO artifacts (name, type, version, digest, path, metadata_json, producer_run_id,"
                          " created_at) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
                          (name, type_, digest, path, json.dumps(meta), run_id, T0.format(3)))
        inputs = [{"name": name, "type": type_, "version": 0, "digest": digest}]
        ids[name] = cur.lastrowid
        con.executemany("INSERT INTO artifact_files VALUES (?, ?, ?, ?)",
                        [(cur.lastrowid, f.relpath, f.sha256, f.size) for f in files])
    con.executemany("INSERT INTO edges VALUES (?, ?, ?)", [
        ("prep", ids["mnist"], "produced"), ("train", ids["mnist"], "used"), ("train", ids["convnet"], "produced"),
        ("boom", ids["mnist"], "used")])
    con.executemany("INSERT INTO aliases VALUES ('convnet', ?, ?, ?)",
                    [("candidate", ids["convnet"], T0.format(4)), ("production", ids["convnet"], T0.format(4))])
    con.execute("INSERT INTO promotions (artifact_id, decision, reason, candidate_accuracy, validation_passed,"
                " production_artifact_id, production_accuracy, margin, flow_run_id, decided_at, wandb_applied_at)"
                " VALUES (?, 'promoted', 'first validated model', 0.97, 1, NULL, NULL, 0.002, 'flow-1', ?, NULL)",
                (ids["convnet"], T0.format(4)))
    con.execute("INSERT INTO sync_log VALUES ('prep', 'upload', 'run-prep', NULL, ?)", (T0.format(5),))
    if "wandb_gaps" in tables:  # the 796abb5 store: every table, the ad-hoc columns added, a row in each
        con.executescript(ADHOC_796ABB5)
        con.execute("UPDATE promotions SET test_set = 'abc', kind = NULL")
        con.execute("INSERT INTO wandb_gaps VALUES ('train', 'upload', 'convnet:v0', 'log_artifact', 'offline', '',"
                    " ?)", (T0.format(5),))
        con.execute("INSERT INTO rejections (artifact_id, action, source, reason, requested_by, at) VALUES"
                    " (?, 'reject', 'rollback', 'bad', 'me', ?)", (ids["mnist"], T0.format(6)))
        con.execute("INSERT INTO holds VALUES ('flow-2', ?, '{}', ?)", (ids["mnist"], T0.format(6)))
    con.close()
    return db


def _read_back(store: LineageStore, *, every_table: bool = True) -> dict:
    """What the store's readers say about everything in it."""
    runs = store.runs()
    arts = store.artifacts()
    out = {"runs": runs, "artifacts": arts, "edges": {r.run_id: store.edges(r.run_id) for r in runs},
           "consumers": {a.artifact_id: store.consumers(a.artifact_id) for a in arts},
           "producers": {a.artifact_id: store.producers(a.artifact_id) for a in arts},
           "aliases": {a.artifact_id: store.aliases_of(a.artifact_id) for a in arts},
           "production": store.alias("convnet", "production"), "promotions": store.promotions(),
           "sync_log": store.sync_log(), "by_file": store.artifacts_with_file(arts[0].files[0].sha256)}
    if every_table:
        out |= {"wandb_gaps": store.wandb_gaps(), "deletions": store.deletions()}
    return out


def _revision(db: Path) -> list:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    finally:
        con.close()


def _columns(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE"
                                            " 'sqlite_%' ORDER BY name")]
        return {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        con.close()


def test_a_store_written_before_alembic_upgrades_in_place_and_reads_back_the_same(tmp_path):
    db = _old_store(tmp_path, DDL_796ABB5)
    before = db.read_bytes()
    old = _read_back(LineageStore(db, readonly=True))  # the old file as it is: read-only opens never migrate
    assert db.read_bytes() == before and "alembic_version" not in _columns(db)

    store = LineageStore(db)
    assert _revision(db) == [migrations.HEAD]
    assert _read_back(store) == old
    assert [r.status for r in old["runs"]] == ["finished", "finished", "failed"]
    assert [a.label for a in store.edges("train").used] == ["mnist:v0"]
    assert old["production"].label == "convnet:v0" and old["promotions"][0].test_set == "abc"
    assert old["sync_log"][0].ref == "run-prep" and old["wandb_gaps"][0].call == "log_artifact"
    report = audit(store, "convnet:production")  # the lineage and every file of it still verify
    assert report.exit_code == Exit.OK, report.message
    assert {c.artifact for c in report.checks if c.status == "ok"} == {"convnet:v0", "mnist:v0"}
    with sqlite3.connect(db) as con:  # the rows the store's raw-SQL readers (holds, rejections) use, untouched
        assert con.execute("SELECT flow_run_id, process_json FROM holds").fetchall() == [("flow-2", "{}")]
        assert con.execute("SELECT action, source FROM rejections").fetchall() == [("reject", "rollback")]
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # and it goes on being written: the next version, the next promotion
    store.start_run("next", "train", config={}, env={}, flow_run_id="flow-3", run_group=None, wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)
    assert store.run("next").status == "running" and store.promotions()[0] == old["promotions"][0]


def _checks(db: Path) -> dict[str, set[str]]:
    """Each table's CHECK constraints as SQLite holds them: what the table's CREATE statement says after CHECK."""
    import re

    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {name: {" ".join(c.split()) for c in re.findall(r"CHECK \(([^)]*\))\)", sql)} for name, sql in rows}
    finally:
        con.close()


@pytest.mark.parametrize("ddl", [DDL_796ABB5, DDL_FC2AC42], ids=["796abb5", "fc2ac42"])
def test_an_upgraded_old_store_keeps_every_check_a_new_store_has_and_refuses_what_they_refuse(tmp_path, ddl):
    """SQLite's batch migrations copy a table from what SQLAlchemy reflects, which leaves out a CHECK without a name:
    the old stores' were all unnamed (`promotions.decision` was lost on the way up, with a warning).
    `migrations.batch` hands them back to a copied table, named as a new store names them."""
    import warnings

    import sqlalchemy as sa

    db = _old_store(tmp_path, ddl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Unnamed CHECK constraint ... omitted" either
        LineageStore(db)
    fresh = tmp_path / "fresh" / "lineage.db"
    LineageStore(fresh)
    assert _checks(db) == _checks(fresh) and _checks(fresh)["promotions"]
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        names = {c["name"] for c in sa.inspect(engine).get_check_constraints("promotions")}
        with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="CHECK constraint failed"):
            conn.execute(sa.text("UPDATE promotions SET decision = 'maybe'"))
    finally:
        engine.dispose()
    assert names == {"ck_promotions_decision"}  # a copied table's, named (`runs` is altered in place: unnamed)


def test_a_store_from_before_the_ad_hoc_migration_gains_its_tables_and_columns(tmp_path):
    db = _old_store(tmp_path, DDL_FC2AC42)
    old = _read_back(LineageStore(db, readonly=True), every_table=False)
    assert old["promotions"][0].kind is None and old["promotions"][0].test_set is None

    store = LineageStore(db)
    assert _revision(db) == [migrations.HEAD]
    assert _read_back(store, every_table=False) == old
    assert store.wandb_gaps() == [] and store.deletions() == {}
    assert audit(store, "convnet:production").exit_code == Exit.OK
    fresh = tmp_path / "fresh" / "lineage.db"
    LineageStore(fresh)
    assert _columns(db) == _columns(fresh)  # the same tables, each with its columns in the same order


def test_two_processes_opening_an_old_store_at_once_adopt_it_once(tmp_path):
    db = _old_store(tmp_path, DDL_796ABB5)
    errors: list[BaseException] = []

    def opener():
        try:
            LineageStore(db)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and _revision(db) == [migrations.HEAD]
    assert len(LineageStore(db).runs()) == 3


def test_a_new_store_is_at_head_and_a_second_open_migrates_nothing(tmp_path, monkeypatch):
    db = tmp_path / "lineage.db"
    LineageStore(db)
    assert _revision(db) == [migrations.HEAD]
    calls = []
    monkeypatch.setattr(schema, "migrate", lambda conn: calls.append(conn))
    from alembic import command

    monkeypatch.setattr(command, "upgrade", lambda *a, **k: calls.append(a))
    LineageStore(db)
    LineageStore(db)
    assert calls == [] and _revision(db) == [migrations.HEAD]


def test_head_is_what_tables_py_describes(tmp_path):
    """The newest revision creates exactly the tables the store's queries are written against, and HEAD names it."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from prefect_wandb.store_engine import engine_for
    from prefect_wandb.tables import metadata

    script = ScriptDirectory.from_config(schema.alembic_config())
    assert script.get_current_head() == migrations.HEAD
    assert [s.revision for s in script.walk_revisions()][-1] == migrations.BASELINE
    db = tmp_path / "lineage.db"
    LineageStore(db)
    with engine_for(db).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_a_table_missing_from_a_store_at_head_is_made_again(tmp_path):
    db = tmp_path / "lineage.db"
    LineageStore(db)
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE holds")
    LineageStore(db)
    assert "holds" in _columns(db) and _revision(db) == [migrations.HEAD]


def test_a_store_from_a_newer_release_is_refused_not_changed(tmp_path):
    db = tmp_path / "lineage.db"
    LineageStore(db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="revision 9999"):
        LineageStore(db)
    assert _revision(db) == ["9999"]


def test_one_engine_per_store_location_in_a_process(tmp_path):
    from prefect_wandb.store_engine import engine_for

    db = tmp_path / "lineage.db"
    engine = engine_for(db)
    assert engine_for(str(db)) is engine and engine_for(tmp_path / "." / "lineage.db") is engine
    assert engine_for(f"sqlite:///{db.resolve()}") is engine  # a URL or a path, the same location
    readonly = engine_for(db, sqlite_uri=f"{db.resolve().as_uri()}?mode=ro")  # opened another way: its own
    assert readonly is not engine and engine_for(tmp_path / "other.db") is not engine


def test_alembic_s_own_command_line_takes_a_store_down_to_the_baseline_and_up_again_keeping_its_rows(tmp_path):
    """`alembic downgrade` / `upgrade` as an operator runs them (env.py on `sqlalchemy.url`, no connection handed
    in): each revision's downgrade undoes its upgrade, the rows stay readable at every step, and up again the store
    reads back as it did; down to nothing leaves no table of the store, and the next open makes them again."""
    from alembic import command

    db = _old_store(tmp_path, DDL_796ABB5)
    head = _read_back(LineageStore(db))
    at_head = _columns(db)
    cfg = schema.alembic_config()
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{db}")

    command.downgrade(cfg, migrations.BASELINE)
    assert _revision(db) == [migrations.BASELINE]
    promotions = _columns(db)["promotions"]
    assert "candidate_accuracy" in promotions and "candidate_value" not in promotions
    assert not {"metric", "aliases", "production_metrics_id"} & set(promotions)
    assert "lease_expires_at" not in _columns(db)["runs"] + _columns(db)["holds"]
    assert _read_back(LineageStore(db, readonly=True)) == head  # read as it is, the old column names mapped
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []

    command.upgrade(cfg, "head")
    assert _revision(db) == [migrations.HEAD] and _columns(db) == at_head
    assert _read_back(LineageStore(db)) == head

    command.downgrade(cfg, "base")
    assert set(_columns(db)) == {"alembic_version"} and _revision(db) == []
    LineageStore(db)  # an empty database again: the next open creates every table
    assert _columns(db) == at_head and _revision(db) == [migrations.HEAD]
