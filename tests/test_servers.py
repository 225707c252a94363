"""The real servers of tests/servers.py (PostgreSQL, S3) and their fixtures: they are real, isolated, password
protected, and survive a stop and start with their data (what the shared store's fault tests build on)."""

from __future__ import annotations

import re
import socket

import fsspec
import psycopg
import pytest
import sqlalchemy as sa

from tests.servers import ServerError, free_ports, postgres_server, s3_server

# -------------------------------------------------------------------------------------------------- PostgreSQL


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_is_a_real_postgresql_15_through_psycopg_and_sqlalchemy(postgres):
    assert re.fullmatch(r"postgresql\+psycopg://lineage:[A-Za-z0-9_-]{24}@127\.0\.0\.1:\d+/lineage", postgres.url)
    assert (postgres.host, postgres.user, postgres.dbname) == ("127.0.0.1", "lineage", "lineage")
    assert f":{postgres.password}@" in postgres.url and f":{postgres.port}/" in postgres.url
    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname=postgres.dbname) as c:
        version = c.execute("select version()").fetchone()[0]
        assert c.execute("show listen_addresses").fetchone()[0] == "127.0.0.1"
        assert c.execute("select current_user").fetchone()[0] == "lineage"
    assert version.startswith("PostgreSQL 15"), version
    engine = sa.create_engine(postgres.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select version()")).scalar_one() == version
            assert conn.execute(sa.text("select current_database()")).scalar_one() == "lineage"
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_new_databases_are_isolated(postgres, postgres_db):
    a, b = postgres_db, postgres.new_database("isolation_b")
    try:
        assert a != b and a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]
        ea, eb = sa.create_engine(a), sa.create_engine(b)
        try:
            with ea.begin() as conn:
                conn.execute(sa.text("create table runs (id int primary key)"))
                conn.execute(sa.text("insert into runs values (1)"))
            with eb.connect() as conn:
                assert conn.execute(sa.text("select current_database()")).scalar_one() == "isolation_b"
                assert conn.execute(sa.text("select to_regclass('runs')")).scalar_one() is None
            with ea.connect() as conn:
                assert conn.execute(sa.text("select count(*) from runs")).scalar_one() == 1
        finally:
            ea.dispose()
            eb.dispose()
        with pytest.raises(psycopg.errors.DuplicateDatabase):
            postgres.new_database("isolation_b")
    finally:
        postgres.drop_database("isolation_b")
    with pytest.raises(ValueError, match="database name"):
        postgres.new_database("Bad-Name; drop")


def test_the_password_is_required(postgres, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/dev/null")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, password="wrong",
                        dbname=postgres.dbname, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=postgres.dbname,
                        connect_timeout=5)
    engine = sa.create_engine(postgres.url.replace(postgres.password, "wrong"))
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        engine.connect()
    engine.dispose()


@pytest.mark.slow
def test_postgres_stop_and_start_keep_the_data_and_the_folder_goes_at_exit():
    with postgres_server() as pg:
        root, port = pg.root, pg.port
        engine = sa.create_engine(pg.url, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.execute(sa.text("create table kept (v text)"))
            conn.execute(sa.text("insert into kept values ('before the restart')"))
        held = psycopg.connect(pg.dsn)
        pg.stop()
        assert not pg.running and not _port_open(port)
        with pytest.raises(psycopg.OperationalError, match="(?i)connection refused"):
            psycopg.connect(pg.dsn, connect_timeout=5)
        with pytest.raises(ServerError, match="not running"):
            pg.stop()
        pg.start()
        assert pg.running and pg.port == port
        # a connection from before the restart is dead; a pre-pinging pool replaces its own
        with pytest.raises(psycopg.OperationalError):
            held.execute("select 1")
        held.close()
        with engine.connect() as conn:
            assert conn.execute(sa.text("select v from kept")).scalar_one() == "before the restart"
        engine.dispose()
        pg.stop("immediate")  # like a crash: recovery at the next start, committed data kept
        pg.start()
        with psycopg.connect(pg.dsn) as c:
            assert c.execute("select v from kept").fetchone() == ("before the restart",)
    assert not root.exists() and not _port_open(port)


def test_free_ports_are_distinct_and_free():
    ports = free_ports(5, offset=10000)
    assert len(set(ports) | {p + 10000 for p in ports}) == 10
    assert not any(_port_open(p) for p in ports)


# ----------------------------------------------------------------------------------------------------------- S3


def test_s3_object_round_trip_through_fsspec(s3, s3_bucket):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", s3.endpoint_url)
    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint_url, key=s3.access_key, secret=s3.secret_key,
                           skip_instance_cache=True)
    name = s3_bucket.removeprefix("s3://")
    fs.pipe(f"{name}/artifacts/model/model.pt", b"weights")
    fs.pipe(f"{name}/artifacts/model/config.json", b"{}")
    assert fs.cat(f"{name}/artifacts/model/model.pt") == b"weights"
    assert sorted(fs.ls(f"{name}/artifacts/model", detail=False)) == [
        f"{name}/artifacts/model/config.json", f"{name}/artifacts/model/model.pt"]
    assert fs.ls(name, detail=False) == [f"{name}/artifacts"]
    assert name in fs.ls("", detail=False)  # the bucket is listed
    with fsspec.open(f"{s3_bucket}/big.bin", "wb", **s3.storage_options(), skip_instance_cache=True) as f:
        f.write(b"x" * (6 * 2**20))  # over 5 MiB: a multipart upload
    fs.invalidate_cache()  # s3fs caches listings: a write through another instance is not in this one's cache
    assert fs.size(f"{name}/big.bin") == 6 * 2**20


def test_s3_with_only_the_aws_environment(s3, s3_bucket, monkeypatch):
    import s3fs

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    env = s3.env()
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # no argument: endpoint and keys from the environment
    fs.pipe(f"{s3_bucket}/env.txt", b"from the environment")
    assert fs.cat(f"{s3_bucket}/env.txt") == b"from the environment"
    with fsspec.open(f"{s3_bucket}/env.txt", "rb", skip_instance_cache=True) as f:
        assert f.read() == b"from the environment"


def test_s3_refuses_a_wrong_secret_and_anonymous_requests(s3, s3_bucket):
    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint_url, key=s3.access_key, secret=s3.secret_key,
                           skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/secret.txt", b"s")
    wrong = fsspec.filesystem("s3", endpoint_url=s3.endpoint_url, key=s3.access_key, secret="wrong",
                              skip_instance_cache=True)
    with pytest.raises(PermissionError, match="signature"):
        wrong.pipe(f"{s3_bucket}/x.txt", b"x")
    with pytest.raises(PermissionError):
        wrong.cat(f"{s3_bucket}/secret.txt")
    anon = fsspec.filesystem("s3", endpoint_url=s3.endpoint_url, anon=True, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        anon.cat(f"{s3_bucket}/secret.txt")
    with pytest.raises(ValueError, match="bucket name"):
        s3.bucket("No_Such")


@pytest.mark.slow
def test_s3_stop_and_start_keep_the_objects_and_the_folder_goes_at_exit():
    with s3_server() as s3:
        root, port = s3.root, s3.port
        url = s3.bucket("kept")
        assert url == "s3://kept"
        opts = {**s3.storage_options(), "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
        fs.pipe("kept/a.txt", b"before the restart")
        s3.stop()
        assert not s3.running and not _port_open(port)
        with pytest.raises(Exception, match="Could not connect to the endpoint URL"):
            fs.cat("kept/a.txt")
        try:
            s3.start()
            assert s3.endpoint_url == f"http://127.0.0.1:{port}"
            assert fs.cat("kept/a.txt") == b"before the restart"
            fs.pipe("kept/b.txt", b"after")
            s3.stop(kill=True)  # like a crash
            s3.start()
            fs.invalidate_cache()
            assert sorted(fs.ls("kept", detail=False)) == ["kept/a.txt", "kept/b.txt"]
            assert fs.cat("kept/b.txt") == b"after"
            fs.pipe("kept/c.txt", b"after the crash")  # a new object does not take an old one's place
            assert fs.cat(["kept/a.txt", "kept/b.txt", "kept/c.txt"]) == {
                "kept/a.txt": b"before the restart", "kept/b.txt": b"after", "kept/c.txt": b"after the crash"}
        except Exception as e:  # what the server said, for a failure that is the server's
            raise AssertionError(f"{e!r}; the server's log:\n{s3.log_tail()}") from e
    assert not root.exists() and not _port_open(port)
