"""The stand-in's HTTP side: GraphQL at /graphql, the run file stream, upload/download URLs, the `/_standin/...`
control endpoints (state, request counts, faults), API-key check, per-operation counts and fault injection."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.wandb_standin.executor import Document, GraphQLFailure
from tests.wandb_standin.model import Model, StorageFull

# what `wandb.init` and `wandb login` need before any artifact call (the old loopback's "init" answers)
INIT_OPERATIONS = frozenset({"UpsertBucket", "Viewer", "GetViewer", "CreateRunFiles", "ServerFeaturesQuery",
                             "RunResumeStatus", "file_stream", "upload"})
AFTER_INIT = "after-init"  # a fault on every GraphQL operation but INIT_OPERATIONS
ANY = "*"  # a fault on every GraphQL operation and the file stream
KINDS = ("http-401", "http-429", "http-500", "graphql-error", "hang")
IMPLEMENTED = frozenset({
    # wandb-core
    "UpsertBucket", "Viewer", "ServerFeaturesQuery", "RunResumeStatus", "CreateRunFiles", "CreateArtifact",
    "CreateArtifactManifest", "CreateArtifactFiles", "CommitArtifact", "UseArtifact", "LinkArtifact",
    "FetchArtifactDigestAlgorithm", "XXHashDigestsEnabled", "ArtifactManifest", "ArtifactFileURLsByManifestEntries",
    "FetchOrgEntityFromEntity", "OrgFeatureFlags",
    # the Python SDK (wandb.Api, Artifact, Run)
    "GetViewer", "ArtifactMembershipByName", "ArtifactByID", "ArtifactCreatedBy", "ArtifactUsedBy",
    "FetchArtifactManifest", "ArtifactMembershipFiles", "GetArtifactMembershipFileUrls", "RunOutputArtifacts",
    "RunInputArtifacts", "AddAliases", "DeleteAliases", "UpdateArtifact", "FetchOrgInfoFromEntity", "Run",
    "ArtifactType", "ProjectArtifactType", "IsProjectReadOnly", "GetDefaultEntity", "ArtifactCollectionAliases",
    # what a user browses: api.artifact_types(), ArtifactType.collections(), api.artifact_collections()
    "ProjectArtifactTypes", "ArtifactTypeArtifactCollections", "ProjectArtifactCollections",
})
# Also answered, though no generated model parses them: what a user browses through wandb.Api().runs() and
# Run.history() / scan_history() (queries written by hand in wandb/apis/public/runs.py) and wandb-core's side of
# scan_history. Their answers are checked against validate.SCHEMA (and the generated fragments they spread).
SCHEMA_CHECKED = frozenset({"Runs", "RunFullHistory", "RunSampledHistory", "RunHistoryKeys", "RunParquetHistory",
                            "HistoryPage", "SampledHistoryPage"})
MAX_BODY = 256 << 20
MAX_LOG = 20_000


@dataclass
class Fault:
    """Fail the `nth` request of operation `op` (and the `times - 1` after it; every one from the nth when
    `times` is None) with `kind`."""
    op: str
    kind: str
    nth: int = 1
    times: int | None = 1
    seen: int = 0
    fired: int = 0
    status: int | None = None  # for kind "http": any status
    message: str | None = None

    def matches(self, op: str) -> bool:
        if self.op == ANY:
            return op != "upload" and op != "download"
        if self.op == AFTER_INIT:
            return op not in INIT_OPERATIONS and op not in ("download",)
        return self.op == op

    def fire(self, op: str) -> bool:
        if not self.matches(op):
            return False
        self.seen += 1
        if self.seen >= self.nth and (self.times is None or self.fired < self.times):
            self.fired += 1
            return True
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address):  # wandb-core drops connections at teardown: not news
        pass


class Standin:
    """`with Standin() as w:` serves on 127.0.0.1 (an ephemeral port unless `port`); `w.url`, `w.api_key` are
    the WANDB_BASE_URL and WANDB_API_KEY to use. `state_dir` keeps the state across restarts."""

    def __init__(self, port: int = 0, state_dir: str | Path | None = None, api_key: str | None = None,
                 entity: str = "standin-entity", max_bytes: int = 1 << 30, hang_s: float = 300):
        self.api_key = api_key or "standin-" + secrets.token_hex(20)  # 48 chars, an on-prem style key
        self.entity, self.hang_s = entity, hang_s
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.requests: deque[tuple[str, str, str, int]] = deque(maxlen=MAX_LOG)
        self.responses: deque[tuple[str, str, dict]] = deque(maxlen=MAX_LOG)  # (op, query, data) answered
        self.missing_fields: set[str] = set()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.model = Model(self.url, entity, Path(state_dir) if state_dir else None, max_bytes)
        self._thread = threading.Thread(target=self._server.serve_forever, name="wandb-standin", daemon=True)

    # ------------------------------------------------------------------------------------ test API
    def fail(self, op: str, kind: str = "http-500", nth: int = 1, times: int | None = 1, *,
             status: int | None = None, message: str | None = None) -> Fault:
        """Make the nth `op` request fail with `kind` (see KINDS); `op` may be ANY or AFTER_INIT."""
        if kind not in KINDS and not (kind == "http" and status):
            raise ValueError(f"unknown fault kind {kind!r}: one of {KINDS} or 'http' with a status")
        f = Fault(op, kind, nth, times, status=status, message=message)
        with self.lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def count(self, op: str | None = None) -> int:
        with self.lock:
            return self.counts[op] if op else sum(self.counts.values())

    def operations(self) -> list[str]:
        with self.lock:
            return [op for _, _, op, _ in self.requests if op]

    def state(self) -> dict:
        with self.lock:
            return self.model.summary()

    def raw_state(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.model.data))

    # ------------------------------------------------------------------------------------ HTTP
    def _fault_for(self, op: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.fire(op):
                    return f
        return None

    def _failure(self, f: Fault, op: str) -> tuple[int, Any, dict]:
        if f.kind == "hang":
            return 0, None, {}
        if f.kind.startswith("http"):
            status = f.status or int(f.kind.split("-", 1)[1])
            return status, {"errors": [{"message": f.message or f"W&B stand-in: HTTP {status} for {op}"}]}, (
                {"Retry-After": "0"} if status == 429 else {})
        return 200, {"errors": [{"message": f.message or f"W&B stand-in: {op} failed (injected)", "path": [op]}],
                     "data": None}, {}

    def _authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
            return key == self.api_key
        return auth == f"Bearer {self.api_key}" or headers.get("X-Api-Key") == self.api_key

    def graphql(self, body: bytes) -> tuple[str, int, Any, dict]:
        try:
            doc = json.loads(body or b"{}")
            query, variables = doc["query"], doc.get("variables") or {}
            parsed = Document(query, doc.get("operationName"))
        except (ValueError, KeyError, TypeError):
            return "", 400, {"errors": [{"message": "W&B stand-in: not a GraphQL request"}]}, {}
        except GraphQLFailure as e:
            return "", 200, {"errors": [{"message": str(e)}], "data": None}, {}
        op = parsed.name
        with self.lock:
            self.counts[op] += 1
        f = self._fault_for(op)
        if f:
            return (op, *self._failure(f, op))
        if op not in IMPLEMENTED and op not in SCHEMA_CHECKED:
            return op, 200, {"errors": [{"message": f"W&B stand-in does not implement operation {op or '(unnamed)'}"
                                         f" ({parsed.kind} {', '.join(parsed.root_fields())})", "path": [op]}],
                             "data": None}, {}
        with self.lock:
            root = self.model.mutation_root() if parsed.kind == "mutation" else self.model.query_root()
            try:
                data, missing = parsed.execute(root, variables)
            except GraphQLFailure as e:
                return op, 200, {"errors": [{"message": str(e), "path": [op]}], "data": None}, {}
            except StorageFull as e:
                return op, 507, {"errors": [{"message": str(e)}]}, {}
            self.missing_fields |= missing
            self.responses.append((op, query, data))
            if parsed.kind == "mutation":
                self.model.save()
        return op, 200, {"data": data}, {}

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60
            # TCP_NODELAY: an answer goes out as its headers, then its body; with Nagle's algorithm the body waited
            # for the client's delayed ACK of the headers, about 40 ms an answer (a W&B server answers at once)
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _body(self) -> bytes | None:
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    self._send(413, {"errors": [{"message": "request too large"}]})
                    return None
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload: Any, headers: dict | None = None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else
                                 "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, op: str, status: int, payload: Any, headers: dict, raw: bytes | None = None):
                with outer.lock:
                    outer.requests.append((self.command, self.path, op, status))
                if status == 0:  # a hang: read, never answered until the stand-in stops
                    outer._closing.wait(outer.hang_s)
                    self.close_connection = True
                    return
                self._send(status, payload, headers, raw)

            def _unauthorized(self) -> bool:
                if outer._authorized(self.headers):
                    return False
                self._answer("", 401, {"errors": [{"message": "W&B stand-in: invalid API key"}]}, {})
                return True

            def do_POST(self):
                body = self._body()
                if body is None:
                    return
                path = self.path.split("?", 1)[0]
                if path == "/graphql":
                    op = ""
                    if not outer._authorized(self.headers):
                        with contextlib.suppress(ValueError, KeyError, TypeError, GraphQLFailure):
                            op = Document(json.loads(body)["query"], json.loads(body).get("operationName")).name
                        with outer.lock:
                            outer.counts[op] += 1
                        return self._answer(op, 401, {"errors": [{"message": "W&B stand-in: invalid API key"}]}, {})
                    return self._answer(*outer.graphql(body))
                m = re.fullmatch(r"/files/([^/]+)/([^/]+)/([^/]+)/file_stream", path)
                if m:
                    if self._unauthorized():
                        return
                    with outer.lock:
                        outer.counts["file_stream"] += 1
                    f = outer._fault_for("file_stream")
                    if f:
                        return self._answer("file_stream", *outer._failure(f, "file_stream"))
                    try:
                        with outer.lock:
                            outer.model.file_stream(*map(unquote, m.groups()), json.loads(body or b"{}"))
                    except (GraphQLFailure, ValueError) as e:
                        return self._answer("file_stream", 404, {"error": str(e)}, {})
                    return self._answer("file_stream", 200, {"exitcode": None, "limits": {}}, {})
                if path.startswith("/sdk/otel/"):  # wandb-core's own telemetry: taken and dropped
                    with outer.lock:
                        outer.counts["otel"] += 1
                    return self._answer("otel", 200, {}, {})
                if path == "/_standin/faults":
                    try:
                        spec = json.loads(body or b"{}")
                        f = outer.fail(spec["op"], spec.get("kind", "http-500"), int(spec.get("nth", 1)),
                                       spec.get("times", 1), status=spec.get("status"), message=spec.get("message"))
                    except (ValueError, KeyError, TypeError) as e:
                        return self._answer("", 400, {"error": str(e)}, {})
                    return self._answer("", 200, asdict(f), {})
                self._answer("", 404, {"error": f"no such endpoint {path}"}, {})

            def do_PUT(self):
                body = self._body()
                if body is None:
                    return
                path = unquote(self.path.split("?", 1)[0])
                with outer.lock:
                    outer.counts["upload"] += 1
                f = outer._fault_for("upload")
                if f:
                    return self._answer("upload", *outer._failure(f, "upload"))
                try:
                    with outer.lock:
                        if path.startswith("/_standin/objects/"):
                            key = path.rsplit("/", 1)[1]
                            if hashlib.md5(body).hexdigest() != key:
                                return self._answer("upload", 400, {"error": "content does not match its MD5"}, {})
                            outer.model.blobs.put(key, body)
                        elif path.startswith("/_standin/manifests/"):
                            outer.model.put_manifest(path.rsplit("/", 1)[1], body)
                        elif path.startswith("/_standin/run-files/"):
                            outer.model.put_run_file(path[len("/_standin/run-files/"):], body)
                        else:
                            return self._answer("upload", 404, {"error": "no such upload URL"}, {})
                        outer.model.save()
                except StorageFull as e:
                    return self._answer("upload", 507, {"error": str(e)}, {})
                except (KeyError, ValueError, GraphQLFailure) as e:
                    return self._answer("upload", 400, {"error": str(e)}, {})
                self._answer("upload", 200, {}, {})

            def do_GET(self):
                path = unquote(self.path.split("?", 1)[0])
                if path == "/_standin/state":
                    return self._answer("", 200, outer.state(), {})
                if path == "/_standin/requests":
                    with outer.lock:
                        return self._answer("", 200, dict(outer.counts), {})
                data = None
                with outer.lock:
                    outer.counts["download"] += 1
                f = outer._fault_for("download")
                if f:
                    return self._answer("download", *outer._failure(f, "download"))
                with outer.lock:
                    if path.startswith("/_standin/objects/"):
                        data = outer.model.blobs.get(path.rsplit("/", 1)[1])
                    elif path.startswith("/_standin/manifests/"):
                        m = outer.model.data["manifests"].get(path.rsplit("/", 1)[1])
                        data = json.dumps(m).encode() if m is not None else None
                if data is None:
                    return self._answer("download", 404, {"error": f"not found: {path}"}, {})
                self._answer("download", 200, None, {}, raw=data)

            def do_DELETE(self):
                if self.path == "/_standin/faults":
                    outer.clear_faults()
                    return self._answer("", 200, {}, {})
                self._answer("", 404, {"error": "not found"}, {})

        return Handler

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Standin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            self.model.save()

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SilentServer:
    """A listening socket that accepts connections and never sends a byte: a W&B host that hangs."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="wandb-silent", daemon=True)

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)  # held open, never read or answered

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self._sock.close()


API_KEY = "standin-" + "0" * 40  # a fixed, well-formed on-prem style key, for tests that set it before the server


def failing(kind: str | None = None, at: str = AFTER_INIT, **kwargs: Any) -> Standin:
    """A stand-in (key API_KEY) on which every request `at` selects fails with `kind` (none when None): AFTER_INIT,
    every operation but what `wandb.init` needs, so init gets online and every artifact call then fails; ANY,
    every GraphQL request and the file stream, so `wandb.init` itself fails."""
    w = Standin(api_key=API_KEY, **kwargs)
    if kind:
        w.fail(at, kind, times=None)
    return w


def closed_port() -> str:
    """The URL of a loopback port nothing listens on (bound, then closed): connection refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


