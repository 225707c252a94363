"""A loopback stand-in for a W&B server, for tests of the real wandb SDK's online path (no W&B server can run here).

What it fakes, and only that: the answers wandb 0.31's `wandb.init` needs to start an online run (wandb-core's
`UpsertBucket` mutation, the `Viewer` / `GetViewer` queries used by `wandb login` and `wandb.Api()`, `CreateRunFiles`
with upload URLs pointing back here, a `PUT` sink for those uploads, and the run's `file_stream` endpoint). It
keeps no model of W&B: it does not store runs or artifacts, it answers no artifact query successfully.

After that, it fails the way W&B does, as chosen by `fault`:

- `"http-401"`, `"http-429"`, `"http-500"`: every GraphQL request other than the init ones above gets that HTTP
  status (429 with `Retry-After: 0`);
- `"graphql-error"`: HTTP 200 with a GraphQL `errors` list (what W&B answers for a schema or permission error);
- `"hang"`: the request is read and never answered (until the server stops): W&B accepting and hanging;
- with `at="init"` the fault starts at the very first request, so `wandb.init` itself fails;
- `None`: the init answers only; any other GraphQL request gets a GraphQL error naming the unsupported operation
  (honest: this is not a W&B that stores artifacts).

Two more stand-ins with no HTTP at all: `closed_port()` (a port nothing listens on: connection refused) and
`SilentServer` (accepts TCP connections and never answers a byte: a host that hangs).

Every request is recorded in `requests` as `(method, path, operation name or "")`, so a test can say which calls
wandb made and which of them failed. Loopback only (127.0.0.1), port chosen by the OS, a daemon thread each.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers import free_port

INIT_OPERATIONS = frozenset({"UpsertBucket", "Viewer", "GetViewer", "CreateRunFiles", "ServerInfo", "ServerFeaturesQuery",
                             "RunResumeStatus", "ProbeServerCapabilities", "ProbeServerVersion"})
API_KEY = "loopback-" + "0" * 40  # a well-formed on-prem style key; the stand-in accepts any key


def graphql_operation(body: bytes) -> tuple[str, dict]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return "", {}
    if not isinstance(doc, dict):
        return "", {}
    name = doc.get("operationName") or ""
    if not name:
        head = (doc.get("query") or "").strip().split("(", 1)[0].split("{", 1)[0].split()
        name = head[1] if len(head) > 1 else ""
    return name, doc.get("variables") or {}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # wandb-core drops connections at teardown: not news
        pass


class WandbLoopback:
    """`with WandbLoopback(fault="http-500") as w:` then `w.url` is the `WANDB_BASE_URL` to use."""

    def __init__(self, fault: str | None = None, at: str = "after-init", entity: str = "loopback-entity"):
        assert fault in (None, "http-401", "http-429", "http-500", "graphql-error", "hang"), fault
        assert at in ("init", "after-init"), at
        self.fault, self.at, self.entity = fault, at, entity
        self._closing = threading.Event()
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                op, variables = graphql_operation(body) if self.path.startswith("/graphql") else ("", {})
                outer._record(self.command, self.path, op)
                status, payload, headers = outer.answer(self.path, op, variables)
                if status == 0:  # "hang": never answer
                    outer._closing.wait(600)
                    return
                self._send(status, payload, headers)

            def do_PUT(self):
                self._body()
                outer._record(self.command, self.path, "")
                self._send(200, {})

            def do_GET(self):
                outer._record(self.command, self.path, "")
                self._send(404, {"error": "not found"})

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="wandb-loopback", daemon=True)

    def _record(self, method: str, path: str, op: str) -> None:
        with self._lock:
            self.requests.append((method, path, op))

    def operations(self) -> list[str]:
        with self._lock:
            return [op for _, _, op in self.requests if op]

    # the answers --------------------------------------------------------------------------------------
    def _failure(self, op: str) -> tuple[int, dict, dict]:
        kind = self.fault or ""
        if kind == "hang":
            return 0, {}, {}
        if kind.startswith("http-"):
            status = int(kind.split("-", 1)[1])
            return status, {"errors": [{"message": f"loopback: HTTP {status}"}]}, (
                {"Retry-After": "0"} if status == 429 else {})
        what = f"loopback W&B stand-in: {op or 'request'} failed" if self.fault else \
            f"loopback W&B stand-in does not implement {op or 'this request'}"
        return 200, {"errors": [{"message": what, "path": [op]}], "data": None}, {}

    def answer(self, path: str, op: str, variables: dict) -> tuple[int, dict, dict]:
        if self.fault and self.at == "init":
            return self._failure(op)
        if "/file_stream" in path:
            return 200, {"exitcode": None, "limits": {}}, {}
        if op == "UpsertBucket":
            name = variables.get("name") or variables.get("id") or uuid.uuid4().hex[:8]
            return 200, {"data": {"upsertBucket": {"inserted": True, "bucket": {
                "id": f"bucket-{name}", "name": name, "displayName": variables.get("displayName") or name,
                "description": None, "config": "{}", "sweepName": None, "historyLineCount": 0,
                "project": {"id": "project-1", "name": variables.get("project") or "uncategorized",
                            "entity": {"id": "entity-1", "name": variables.get("entity") or self.entity}}}}}}, {}
        if op in ("Viewer", "GetViewer"):
            return 200, {"data": {"viewer": {
                "id": "viewer-1", "name": "loopback", "username": "loopback", "email": None, "admin": False,
                "flags": None, "entity": self.entity, "deletedAt": None, "apiKeys": None,
                "teams": {"edges": []}}}}, {}
        if op == "CreateRunFiles":
            files = [{"name": f, "uploadUrl": f"{self.url}/upload/{f}", "uploadHeaders": []}
                     for f in variables.get("files") or []]
            return 200, {"data": {"createRunFiles": {"runID": "bucket-run", "uploadHeaders": [],
                                                      "files": files}}}, {}
        return self._failure(op)

    # lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> WandbLoopback:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


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


def closed_port() -> str:
    """The URL of a loopback port nothing listens on (bound, then closed): connection refused."""
    return f"http://127.0.0.1:{free_port()}"
