"""Downloading MNIST's published files from mirrors (`mnist_pipeline/mirrors.py`): loopback HTTP and file:// mirrors,
md5 checks, timeouts, which errors are retried."""

import functools
import hashlib
import http.server
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mnist_pipeline import data, idx, mirrors
from tests.helpers import (
    REPO,
    last_line,
    leftovers,
    offline_run_env,
    run_argv,
    store_state,
    write_mnist,
)


@pytest.fixture(autouse=True)
def _no_refused_mirrors(monkeypatch):
    monkeypatch.setattr(mirrors, "_refused", {})  # an earlier test's mirror port may come back here



@pytest.fixture
def mirror_server(tmp_path):
    """A loopback HTTP server serving tiny .gz MNIST files, standing in for an MNIST mirror."""
    src = tmp_path / "mirror"
    write_mnist(src, gz=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src / "MNIST" / "raw"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield src, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_uses_the_configured_mirrors(tmp_path, monkeypatch, mirror_server):
    """torchvision's real download code, pointed at a loopback mirror (no internet here)."""
    src, mirror = mirror_server
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (src / "MNIST" / "raw").iterdir()}
    monkeypatch.setattr(idx, "PUBLISHED_MD5", sums)
    prepared = data.prepare("download", tmp_path / "root", mirrors=[mirror])
    assert len(prepared.train) == 120
    from torchvision.datasets import MNIST

    assert MNIST.mirrors[0].startswith("https://")  # the global list is left alone
    assert all(f.md5 == sums[f.name] for f in prepared.raw_files)


def test_download_rejects_a_file_whose_md5_is_not_the_published_one(tmp_path, mirror_server):
    src, mirror = mirror_server  # tiny files: their md5 is not torchvision's published one
    got = hashlib.md5((src / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    with pytest.raises(idx.ChecksumError, match=rf"train-images-idx3-ubyte.gz: md5 {got} expected "
                       rf"{idx.PUBLISHED_MD5['train-images-idx3-ubyte.gz']} .* not kept, and is not retried"):
        data.prepare("download", tmp_path / "root", mirrors=[mirror])
    assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []  # the refused file is not kept



def test_a_file_mirror_is_supported_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """An air-gapped site's local mirror: file:///dir/ (torchvision's helper crashed on it, leaving a 0-byte .gz)."""
    write_mnist(tmp_path / "mirror", gz=True)
    raw = tmp_path / "mirror" / "MNIST" / "raw"
    monkeypatch.setattr(idx, "PUBLISHED_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in raw.iterdir()})
    prepared = data.prepare("download", tmp_path / "root", mirrors=[raw.as_uri() + "/"])
    assert len(prepared.train) == 120
    assert {f.origin for f in prepared.raw_files} == {f"{raw.as_uri()}/{f.name}" for f in prepared.raw_files}
    assert sorted(p.name for p in (tmp_path / "root" / "MNIST" / "raw").iterdir()) == sorted(
        p.name for p in raw.iterdir())  # the download cache: whole files only
    # a second run finds the cache and fetches nothing (the mirror is gone)
    again = data.prepare("download", tmp_path / "root", mirrors=[(tmp_path / "gone").as_uri() + "/"])
    assert again.folder == prepared.folder


@pytest.mark.slow
def test_a_mirror_that_never_answers_times_out_and_the_next_one_is_tried(tmp_path, monkeypatch, mirror_server):
    import socket
    import time

    src, good = mirror_server
    monkeypatch.setattr(idx, "PUBLISHED_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                                for p in (src / "MNIST" / "raw").iterdir()})
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never sends a byte
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    dead = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        t0 = time.monotonic()
        with pytest.raises(mirrors.DownloadError, match=r"train-images-idx3-ubyte.gz: no mirror delivered it: "
                           r"http://127.0.0.1:\d+/train-images-idx3-ubyte.gz: no answer within 0.5 s \(data.timeout\)"):
            data.prepare("download", tmp_path / "root", mirrors=[dead], timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []
        prepared = data.prepare("download", tmp_path / "root", mirrors=[dead, good], timeout=0.5)
        assert len(prepared.train) == 120 and all(f.origin.startswith(good) for f in prepared.raw_files)
    finally:
        silent.close()



class _CountingMirror:
    """A loopback HTTP mirror of its own that counts the GET requests per file: `files` served, others 404."""

    def __init__(self, directory: Path):
        self.gets: dict[str, int] = {}
        counts = self.gets

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(directory), **kw)

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                counts[name] = counts.get(name, 0) + 1
                super().do_GET()

            def log_message(self, *a):
                pass

        directory.mkdir(parents=True, exist_ok=True)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _State:
    """What Prefect hands a retry condition: a state whose result() raises the task's error."""

    def __init__(self, error: BaseException):
        self.error = error

    def result(self):
        raise self.error


def _attempts(root, mirrors, retries=2, timeout=30.0):
    """prepare-data's download as its task runs it: retried while the task's retry condition says so."""
    from mnist_pipeline.tasks.prepare_data import network_error_only

    errors = []
    for _ in range(retries + 1):
        try:
            data.prepare("download", root, mirrors=mirrors, timeout=timeout)
        except Exception as e:
            errors.append(e)
            if not network_error_only(None, None, _State(e)):
                break
    return errors


def test_a_404_mirror_is_not_retried_and_says_its_http_status(tmp_path):
    empty = _CountingMirror(tmp_path / "empty")
    try:
        errors = _attempts(tmp_path / "root", [empty.url])
    finally:
        empty.close()
    assert len(errors) == 1  # one attempt, not three
    [e] = errors
    assert isinstance(e, mirrors.MirrorRefused) and not isinstance(e, mirrors.DownloadError)
    assert str(e) == (f"train-images-idx3-ubyte.gz: no mirror has it (not retried): "
                      f"{empty.url}train-images-idx3-ubyte.gz: HTTP 404 Not Found")
    assert empty.gets == {"train-images-idx3-ubyte.gz": 1}


@pytest.mark.slow  # waits out a real retry delay
def test_a_wrong_md5_mirror_is_downloaded_once_though_another_mirror_s_network_error_is_retried(tmp_path):
    import socket

    write_mnist(tmp_path / "m", gz=True)  # tiny files: not the published md5
    wrong = _CountingMirror(tmp_path / "m" / "MNIST" / "raw")
    silent = socket.socket()  # accepts connections and never answers: a network error, worth a retry
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    dead = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        errors = _attempts(tmp_path / "root", [wrong.url, dead], timeout=0.3)
        assert len(errors) == 3 and all(isinstance(e, mirrors.DownloadError) for e in errors)
        assert wrong.gets == {"train-images-idx3-ubyte.gz": 1}  # really not retried
        assert "not retried" in str(errors[0]) and "not downloaded again" in str(errors[1])
        # a 404 and a wrong md5, no network error: nothing worth a retry
        empty = _CountingMirror(tmp_path / "empty")
        try:
            errors = _attempts(tmp_path / "root2", [empty.url, wrong.url])
        finally:
            empty.close()
        assert len(errors) == 1 and isinstance(errors[0], mirrors.MirrorRefused)
        assert "HTTP 404 Not Found" in str(errors[0]) and "not downloaded again" in str(errors[0])
        assert wrong.gets == {"train-images-idx3-ubyte.gz": 1}
    finally:
        wrong.close()
        silent.close()


# ------------------------------------------------------------------------ a mirror that never answers, in a whole run


FAULT_TIMEOUT = float(os.environ.get("MNIST_TEST_FAULT_TIMEOUT", "0.5"))  # seconds a dead mirror is waited for


@pytest.mark.slow
def test_a_mirror_that_accepts_and_never_answers_times_out_is_retried_and_fails_with_one_line(prefect_server,
                                                                                            tmp_path):
    silent = socket.socket()  # the kernel accepts connections into the backlog; nobody ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    mirror = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        t0 = time.monotonic()
        proc = subprocess.run(run_argv(tmp_path, "--source", "download", "--mirrors", mirror, "--timeout",
                                       str(FAULT_TIMEOUT), "--retries", "1", "--retry-delay", "0"),
                              cwd=REPO, env=offline_run_env(tmp_path), capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
    finally:
        silent.close()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(rf"mnist-pipeline: pipeline failed: DownloadError: train-images-idx3-ubyte.gz: no mirror "
                        rf"delivered it: {mirror}train-images-idx3-ubyte.gz: no answer within {FAULT_TIMEOUT:g} s "
                        r"\(data.timeout\)", last_line(proc.stderr)), last_line(proc.stderr)
    runs = store_state(tmp_path / "lineage.db")
    assert [(j, s) for j, s, _ in runs] == [("prepare-data", "failed")] * 2  # the documented retry, then no more
    assert seconds < 60
    assert leftovers(tmp_path) == [] and not list((tmp_path / "data").rglob("*.gz"))
