"""The lineage store in PostgreSQL (a real server, `tests/servers.py`; a fresh database per test): a URL is taken
where a store is expected and refused (one line, the password masked) where a path is, or when its scheme is
another; the schema at head on an empty database, also with two processes creating it at once; the password in
nothing a run writes (files, W&B's folders, the store's rows, Prefect's parameters, the sync hint); the CLI on a
URL; a PostgreSQL restart between two stages."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from prefect_wandb import LineageSettings, LocationError, StoreError, StoreURL, store_location
from prefect_wandb.cli import main as ops_main
from prefect_wandb.exit_codes import Exit
from prefect_wandb.store import LineageStore, NewArtifact
from prefect_wandb.tables import metadata
from tests.servers import database_dump


def _start(store, run_id, job="train"):
    store.start_run(run_id, job, config={"a": 1}, env={}, flow_run_id="f1", run_group=None, wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)


# --------------------------------------------------------------------------------------------- at the door

@pytest.mark.parametrize("value", ["mysql://u:SECRETPW@h/db", "s3://bucket/team", "http://example.com/x",
                                   "postgresql+psycopg2://u:SECRETPW@h/db"])
def test_an_unknown_scheme_is_refused_in_one_line_naming_the_field(value, tmp_path, monkeypatch, capsys):
    from mnist_pipeline.cli.main import main as mnist_main
    from mnist_pipeline.config import PipelineConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocationError) as e:
        store_location(value, "store")
    assert str(e.value).startswith("store: ") and "\n" not in str(e.value) and "SECRETPW" not in str(e.value)
    with pytest.raises(ValueError, match="store: .* is not a lineage store location") as e2:
        LineageSettings(store=value)
    assert "SECRETPW" not in str(e2.value)
    with pytest.raises(ValueError, match="lineage_db: ") as e3:
        PipelineConfig(lineage_db=value)
    assert "SECRETPW" not in str(e3.value)
    assert ops_main(["audit", "x:v0", "--lineage-db", value]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prefect-wandb audit: --lineage-db: ") and "SECRETPW" not in err
    assert mnist_main(["run", "--lineage-db", value, "--source", "synthetic"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lineage_db: " in err and "SECRETPW" not in err, err
    assert list(tmp_path.iterdir()) == []  # never a folder named after the URL


def test_a_url_where_a_path_is_expected_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from mnist_pipeline.cli.main import main as mnist_main
    from mnist_pipeline.config import PipelineConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="code_root: .* is a URL, and code_root is a path here"):
        LineageSettings(code_root="http://x/y")
    with pytest.raises(ValueError, match="artifacts: http://x/y is not an artifacts location"):  # S3 only (test_s3_artifacts)
        LineageSettings(artifacts="http://x/y")
    with pytest.raises(ValueError, match="artifacts_dir: ftp://host/team is not an artifacts location"):
        PipelineConfig(artifacts_dir="ftp://host/team")
    url = "postgresql+psycopg://u:SECRETPW@127.0.0.1:1/db"
    assert mnist_main(["run", "--artifacts-dir", url, "--source", "synthetic"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "artifacts_dir: " in err and "SECRETPW" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_url_is_taken_as_a_store_and_shown_masked(postgres_db, postgres, tmp_path):
    libpq = postgres_db.replace("postgresql+psycopg://", "postgresql://")
    loc = store_location(libpq)
    assert isinstance(loc, StoreURL) and loc.secret() == postgres_db  # libpq's scheme gets the psycopg driver
    assert str(loc) == f"{postgres_db}".replace(postgres.password, "***") == repr(loc)[10:-2]
    assert f"{loc}" == str(loc) and postgres.password not in f"{loc!s} {loc!r}"
    settings = LineageSettings(store=libpq, artifacts=tmp_path / "art")
    assert postgres.password not in settings.model_dump_json() and postgres.password not in repr(settings)
    assert json.loads(settings.model_dump_json())["store"] == postgres_db.replace(f":{postgres.password}", "")
    assert settings.wandb_folder() == tmp_path  # no folder beside a database: beside the artifacts folder
    store = settings.open_store()
    assert store.url == loc and store.folder is None and store.path == str(loc)
    _start(store, "r1")
    assert LineageStore(libpq, readonly=True).run("r1").status == "running"
    # a relative and a ~ path still resolve as before
    assert LineageSettings(store="~/l.db").resolved().store == Path("~/l.db").expanduser()


def test_an_empty_database_read_only_and_an_unreachable_server_are_one_line_each(postgres, postgres_db, capsys):
    with pytest.raises(StoreError, match="no lineage store in this database"):
        LineageStore(postgres_db, readonly=True)
    assert ops_main(["audit", "x:v0", "--lineage-db", postgres_db]) == Exit.STORE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and postgres.password not in err and "lineage:***@" in err
    from tests.servers import free_ports

    closed = postgres_db.replace(f":{postgres.port}/", f":{free_ports(1)[0]}/")
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        LineageStore(closed)
    assert time.monotonic() - t0 < 15 and "\n" not in str(e.value) and postgres.password not in str(e.value)
    assert "cannot open the lineage store" in str(e.value) and "Connection refused" in str(e.value)


# --------------------------------------------------------------------------------------------- the schema

def _open_at_once(url, barrier, i):
    barrier.wait()
    store = LineageStore(url)
    _start(store, f"r{i}")


def test_two_processes_creating_the_schema_at_once_both_end_at_head(postgres):
    from prefect_wandb import migrations

    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        url = postgres.new_database()
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_open_at_once, args=(url, barrier, i)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"round {round_}"
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == \
                    [migrations.HEAD]
                assert set(metadata.tables) <= set(sa.inspect(conn).get_table_names())
        finally:
            engine.dispose()
        assert sorted(r.run_id for r in LineageStore(url).runs()) == ["r0", "r1"]


# --------------------------------------------------------------------------------------------- a restart

def test_a_postgresql_restart_between_two_stages_reconnects_and_while_down_fails_in_one_line(postgres, postgres_db,
                                                                                          tmp_path):
    store = LineageStore(postgres_db)
    _start(store, "r1")
    d = tmp_path / "m"
    d.mkdir()
    (d / "x.bin").write_text("x")
    postgres.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as e:
            store.finish_run("r1", used=[], produced=[], summary={}, wandb_url=None, wandb_mode="offline")
        assert time.monotonic() - t0 < 15 and "\n" not in str(e.value) and postgres.password not in str(e.value)
        assert "cannot be reached" in str(e.value)
    finally:
        postgres.start()
    again = LineageStore(postgres_db)  # the next stage: its pooled connections were the old server's
    assert again.run("r1").status == "running"
    again.finish_run("r1", used=[], produced=[NewArtifact("m", "model", "ab" * 32, str(d), {}, ())], summary={},
                     wandb_url=None, wandb_mode="offline")
    assert store.run("r1").status == "finished"


# --------------------------------------------------------------------------------------------- the secret

@pytest.mark.slow
def test_a_run_on_a_url_store_writes_its_password_nowhere_and_audits_from_the_cli(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, postgres, postgres_db, capsys, caplog, monkeypatch):
    from mnist_pipeline.cli.main import main as mnist_main
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline as pipeline
    from tests.helpers import flow_run, tiny_config

    secret = postgres.password
    cfg = tiny_config(tmp_path, tiny_mnist, lineage_db=postgres_db, train={"watch": False})
    state = pipeline(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.promotion.decision == "promoted"
    fr = flow_run(state.state_details.flow_run_id)
    assert secret not in json.dumps(fr.parameters, default=str)  # the Prefect parameter: without the password
    assert json.dumps(fr.parameters["config"]["lineage_db"]) == json.dumps(postgres_db.replace(f":{secret}", ""))
    printed = json.dumps(summary.to_dict(), default=str)
    assert secret not in printed and "lineage:***@" in printed
    assert secret not in caplog.text and secret not in state.message
    # every file the run wrote: artifacts, W&B's run folders (config, metadata, logs), the report, the data
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 30 and any("wandb" in p.parts for p in files)
    assert [p for p in files if secret.encode() in p.read_bytes() or secret in str(p)] == []
    dump = database_dump(postgres_db)
    assert "convnet" in dump and secret not in dump
    # the URL is on record where the config is (W&B's run config): without its password
    nopw = postgres_db.replace(f":{secret}", "").encode()
    assert any(nopw in p.read_bytes() for p in files if "wandb" in p.parts and p.suffix in {".yaml", ".wandb"})
    # the sync hint names the store runnable as shown: the URL without the password (libpq: PGPASSWORD)
    from prefect_wandb import where_records_went

    line = where_records_went(LineageStore(postgres_db), str(fr.id), offline_reason="offline",
                              command="mnist-pipeline").line
    assert f"sync --lineage-db {postgres_db.replace(f':{secret}', '')}`" in line and secret not in line
    # the operator's audit, from the CLI, on the URL
    capsys.readouterr()
    assert mnist_main(["audit", "convnet:production", "--lineage-db", postgres_db]) == Exit.OK
    out, err = capsys.readouterr()
    assert "VERIFIED" in out and secret not in out + err
    # the deployment's way: the URL without the password, the password in libpq's PGPASSWORD
    monkeypatch.setenv("PGPASSWORD", secret)
    assert mnist_main(["audit", "convnet:production", "--lineage-db", postgres_db.replace(f":{secret}", "")]) == \
        Exit.OK
    assert "VERIFIED" in capsys.readouterr().out


@pytest.mark.slow
def test_a_prefect_block_keeps_the_url_without_its_password_and_pgpassword_completes_it(
        prefect_server, postgres, postgres_db, monkeypatch, tmp_path):
    from prefect.client.orchestration import get_client

    from prefect_wandb import LineageBlock

    LineageSettings(store=postgres_db).open_store()  # the store exists
    LineageBlock(settings=LineageSettings(store=postgres_db, artifacts=tmp_path / "art")).save("pg-team",
                                                                                              overwrite=True)
    with get_client(sync_client=True) as client:  # what the Prefect server holds
        doc = client.read_block_document_by_name("pg-team", block_type_slug="wandb-lineage", include_secrets=True)
    assert postgres.password not in json.dumps(doc.data, default=str)
    settings = LineageBlock.load("pg-team").settings
    assert isinstance(settings.store, StoreURL) and not settings.store.has_password
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(StoreError, match="no password supplied") as e:
        settings.open_store()
    assert "\n" not in str(e.value)
    # or a Prefect Secret block named by the worker's environment: one line while it cannot be read ...
    from prefect.blocks.system import Secret

    from prefect_wandb.store_engine import PASSWORD_BLOCK_ENV

    monkeypatch.setenv(PASSWORD_BLOCK_ENV, "pg-team-password")
    with pytest.raises(StoreError, match="Secret block 'pg-team-password'") as e:
        settings.open_store()
    assert "\n" not in str(e.value) and postgres.password not in str(e.value)
    Secret(value=postgres.password).save("pg-team-password", overwrite=True)  # ... and the store opens once it can
    assert settings.open_store().runs() == []
    monkeypatch.delenv(PASSWORD_BLOCK_ENV)
    monkeypatch.setenv("PGPASSWORD", postgres.password)  # a worker's environment
    assert settings.open_store().runs() == []
