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
import torch

from mnist_pipeline import data
from tests.helpers import (
    REPO,
    STEMS,
    idx_bytes,
    last_line,
    leftovers,
    offline_run_env,
    run_argv,
    store_state,
    tiny_digits,
    write_mnist,
)


@pytest.fixture(autouse=True)
def _no_refused_mirrors(monkeypatch):
    monkeypatch.setattr(data, "_refused", {}, raising=False)  # an earlier test's mirror port may come back here


@pytest.mark.slow
def test_torchvision_reads_the_tiny_files(tiny_mnist, tmp_path):
    prepared = data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    assert len(prepared.train) == 120 and len(prepared.test) == 40
    assert prepared.train.images.dtype == torch.uint8 and prepared.train.images.shape == (120, 28, 28)
    images, labels = tiny_digits(120, 0)
    assert torch.equal(prepared.train.images, torch.from_numpy(images))
    assert prepared.train.labels.tolist() == labels.tolist()
    assert prepared.train.class_counts() == [12] * 10
    # stored read-only in torchvision's own layout, in a folder named by the files' content
    stored = prepared.folder / "MNIST" / "raw" / STEMS[("train", "images")]
    assert stored.is_file() and prepared.folder.parent == tmp_path / "root" / "sha256"
    assert stored.stat().st_mode & 0o222 == 0
    info = {f.name: f for f in prepared.raw_files}[STEMS[("train", "images")]]
    assert info.stored == str(stored) and info.stored_sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "root" / "sha256").iterdir()] == [prepared.folder.name]  # no leftovers


@pytest.mark.slow  # torchvision reads the files
def test_slice_keeps_every_nth_image(tiny_mnist, tmp_path):
    prepared = data.prepare("local", tmp_path / "root", local_dir=tiny_mnist, slice_step=5)
    assert len(prepared.train) == 24 and len(prepared.test) == 8
    assert prepared.train.labels.tolist() == [0, 5] * 12


def test_gz_copy_is_accepted_with_a_note_on_md5(tmp_path):
    write_mnist(tmp_path / "src", gz=True)
    prepared = data.prepare("local", tmp_path / "root", local_dir=tmp_path / "src")
    assert len(prepared.train) == 120
    info = {f.name: f for f in prepared.raw_files}
    gz = tmp_path / "src" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    assert info[gz.name].md5 == hashlib.md5(gz.read_bytes()).hexdigest()
    assert info[gz.name].sha256 == hashlib.sha256(gz.read_bytes()).hexdigest()
    assert "differs from the published" in info[gz.name].note


def test_published_md5_is_recognised(tmp_path, monkeypatch):
    write_mnist(tmp_path / "src", gz=True)
    gz = tmp_path / "src" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(data.PUBLISHED_MD5, gz.name, hashlib.md5(gz.read_bytes()).hexdigest())
    prepared = data.prepare("local", tmp_path / "root", local_dir=tmp_path / "src")
    assert {f.name: f.note for f in prepared.raw_files}[gz.name] == "md5 matches the published file"


def _corrupt(raw, stem, blob):
    (raw / stem).write_bytes(blob)
    return raw / stem


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated IDX file"),
    ("magic", "wrong IDX magic number"),
    ("count", "images but"),
    ("labels", "label(s) outside 0..9"),
    ("trailing", "trailing bytes"),
    ("header-only", "truncated"),
])
def test_malformed_idx_is_rejected_with_the_file_named(tiny_mnist, tmp_path, case, message):
    raw = tiny_mnist / "MNIST" / "raw"
    images, labels = tiny_digits(120, 0)
    stem = STEMS[("train", "labels" if case in ("count", "labels") else "images")]
    blob = {
        "truncated": idx_bytes(images)[:-100],
        "magic": b"\x00\x00\x08\x01" + idx_bytes(images)[4:],
        "count": idx_bytes(labels[:100]),
        "labels": idx_bytes(labels * 2),
        "trailing": idx_bytes(images) + b"\x00" * 7,
        "header-only": idx_bytes(images)[:6],
    }[case]
    _corrupt(raw, stem, blob)
    with pytest.raises(data.DataError) as e:
        data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    assert message in str(e.value)
    assert str(tiny_mnist / "MNIST" / "raw" / stem) in str(e.value)  # the file the user gave


def test_corrupt_gzip_is_named(tmp_path):
    raw = write_mnist(tmp_path / "src", gz=True)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz: corrupt gzip"):
        data.prepare("local", tmp_path / "root", local_dir=tmp_path / "src")
    assert not list((tmp_path / "root" / "MNIST" / "raw").glob("*.partial"))


def test_missing_files_and_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="missing MNIST file.*train-images-idx3-ubyte"):
        data.prepare("local", tmp_path / "root", local_dir=tmp_path / "empty")


def test_slice_larger_than_the_dataset(tiny_mnist, tmp_path):
    with pytest.raises(data.DataError, match=r"slice=500 is larger than the data: .*/src/MNIST/raw/"
                       r"train-images-idx3-ubyte holds only 120 images \(data.slice\)"):
        data.prepare("local", tmp_path / "root", local_dir=tiny_mnist, slice_step=500)


def test_synthetic_source_is_deterministic_and_readable(tmp_path):
    a = data.prepare("synthetic", tmp_path / "a", synthetic_sizes=(50, 20))
    b = data.prepare("synthetic", tmp_path / "b", synthetic_sizes=(50, 20))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert [f.sha256 for f in a.raw_files] == [f.sha256 for f in b.raw_files]
    assert int(a.train.images.float().std()) > 10  # not blank


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
    monkeypatch.setattr(data, "PUBLISHED_MD5", sums)
    prepared = data.prepare("download", tmp_path / "root", mirrors=[mirror])
    assert len(prepared.train) == 120
    from torchvision.datasets import MNIST

    assert MNIST.mirrors[0].startswith("https://")  # the global list is left alone
    assert all(f.md5 == sums[f.name] for f in prepared.raw_files)


def test_download_rejects_a_file_whose_md5_is_not_the_published_one(tmp_path, mirror_server):
    src, mirror = mirror_server  # tiny files: their md5 is not torchvision's published one
    got = hashlib.md5((src / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    with pytest.raises(data.ChecksumError, match=rf"train-images-idx3-ubyte.gz: md5 {got} expected "
                       rf"{data.PUBLISHED_MD5['train-images-idx3-ubyte.gz']} .* not kept, and is not retried"):
        data.prepare("download", tmp_path / "root", mirrors=[mirror])
    assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []  # the refused file is not kept


def test_split_round_trip(tiny_mnist, tmp_path):
    prepared = data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    data.save_split(prepared.test, tmp_path / "t.pt")
    back = data.load_split(tmp_path / "t.pt")
    assert torch.equal(back.images, prepared.test.images) and torch.equal(back.labels, prepared.test.labels)
    x = data.to_float(back.images)
    assert x.shape == (40, 1, 28, 28) and float(x.max()) == 1.0 and x.dtype == torch.float32


def test_a_file_mirror_is_supported_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """An air-gapped site's local mirror: file:///dir/ (torchvision's helper crashed on it, leaving a 0-byte .gz)."""
    write_mnist(tmp_path / "mirror", gz=True)
    raw = tmp_path / "mirror" / "MNIST" / "raw"
    monkeypatch.setattr(data, "PUBLISHED_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in raw.iterdir()})
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
    monkeypatch.setattr(data, "PUBLISHED_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                                for p in (src / "MNIST" / "raw").iterdir()})
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never sends a byte
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    dead = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        t0 = time.monotonic()
        with pytest.raises(data.DownloadError, match=r"train-images-idx3-ubyte.gz: no mirror delivered it: "
                           r"http://127.0.0.1:\d+/train-images-idx3-ubyte.gz: no answer within 0.5 s \(data.timeout\)"):
            data.prepare("download", tmp_path / "root", mirrors=[dead], timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []
        prepared = data.prepare("download", tmp_path / "root", mirrors=[dead, good], timeout=0.5)
        assert len(prepared.train) == 120 and all(f.origin.startswith(good) for f in prepared.raw_files)
    finally:
        silent.close()


def test_other_data_settings_never_rewrite_the_files_an_earlier_dataset_was_read_from(tmp_path):
    first = data.prepare("synthetic", tmp_path / "root", synthetic_sizes=(50, 20))
    before = {f.stored: f.stored_sha256 for f in first.raw_files}
    second = data.prepare("synthetic", tmp_path / "root", synthetic_sizes=(60, 20))
    assert second.folder != first.folder
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before} == before
    # the same settings again reuse the folder; a corrupted copy is moved aside and stored again
    victim = Path(first.raw_files[0].stored)
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    third = data.prepare("synthetic", tmp_path / "root", synthetic_sizes=(50, 20))
    assert third.folder == first.folder
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == first.raw_files[0].stored_sha256
    assert len(list((tmp_path / "root" / "sha256").glob(f"{first.folder.name}.corrupt-*"))) == 1


def test_the_dataset_record_is_the_same_for_the_same_raw_files_in_another_folder(tmp_path):
    """dataset.json is part of the dataset's content address: no path, mirror or cache state in it."""
    import json
    import shutil

    records, blobs = [], []
    write_mnist(tmp_path / "made", gz=True)
    for where in ("a", "b/deeper"):
        shutil.copytree(tmp_path / "made", tmp_path / where / "src")  # the same bytes, in another folder
        prepared = data.prepare("local", tmp_path / where / "root", local_dir=tmp_path / where / "src")
        records.append(data.dataset_record(prepared, 1))
        data.save_split(prepared.train, tmp_path / where / "train.pt")
        blobs.append((tmp_path / where / "train.pt").read_bytes())
        meta = data.provenance(prepared, tmp_path / where / "src", None)  # where it came from: the metadata
        raw = tmp_path / where / "src" / "MNIST" / "raw"
        assert {f["origin"] for f in meta["raw_files"]} == {str(raw / f.name) for f in prepared.raw_files}
        assert meta["raw_store"] == str(prepared.folder)
    assert records[0] == records[1] and blobs[0] == blobs[1]
    assert str(tmp_path) not in json.dumps(records[0])
    assert records[0]["raw_files"][0].keys() == set(data.RAW_CONTENT_FIELDS)


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
    assert isinstance(e, data.MirrorRefused) and not isinstance(e, data.DownloadError)
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
        assert len(errors) == 3 and all(isinstance(e, data.DownloadError) for e in errors)
        assert wrong.gets == {"train-images-idx3-ubyte.gz": 1}  # really not retried
        assert "not retried" in str(errors[0]) and "not downloaded again" in str(errors[1])
        # a 404 and a wrong md5, no network error: nothing worth a retry
        empty = _CountingMirror(tmp_path / "empty")
        try:
            errors = _attempts(tmp_path / "root2", [empty.url, wrong.url])
        finally:
            empty.close()
        assert len(errors) == 1 and isinstance(errors[0], data.MirrorRefused)
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

