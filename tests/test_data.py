"""MNIST data (`mnist_pipeline/data.py`, the IDX format of `mnist_pipeline/idx.py`): local and synthetic sources,
malformed files named, the content-addressed raw store, the dataset record, splits saved and loaded."""

import hashlib
from pathlib import Path

import pytest
import torch

from mnist_pipeline import data, idx
from tests.helpers import (
    STEMS,
    idx_bytes,
    tiny_digits,
    write_mnist,
)


@pytest.mark.slow  # importing torchvision: 2-3 s
def test_the_files_are_read_into_the_tensors_torchvision_s_mnist_class_makes_of_them(tiny_mnist, tmp_path):
    from torchvision.datasets import MNIST

    prepared = data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    for split, train in ((prepared.train, True), (prepared.test, False)):
        theirs = MNIST(str(prepared.folder), train=train, download=False)
        assert split.images.dtype == theirs.data.dtype and torch.equal(split.images, theirs.data)
        assert split.labels.dtype == theirs.targets.dtype and torch.equal(split.labels, theirs.targets)


def test_the_tiny_files_are_read_checked_and_stored(tiny_mnist, tmp_path):
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
    monkeypatch.setitem(idx.PUBLISHED_MD5, gz.name, hashlib.md5(gz.read_bytes()).hexdigest())
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
    with pytest.raises(idx.DataError) as e:
        data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    assert message in str(e.value)
    assert str(tiny_mnist / "MNIST" / "raw" / stem) in str(e.value)  # the file the user gave


def test_corrupt_gzip_is_named(tmp_path):
    raw = write_mnist(tmp_path / "src", gz=True)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(idx.DataError, match="train-images-idx3-ubyte.gz: corrupt gzip"):
        data.prepare("local", tmp_path / "root", local_dir=tmp_path / "src")
    assert not list((tmp_path / "root" / "MNIST" / "raw").glob("*.partial"))


def test_missing_files_and_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(idx.DataError, match="missing MNIST file.*train-images-idx3-ubyte"):
        data.prepare("local", tmp_path / "root", local_dir=tmp_path / "empty")


def test_slice_larger_than_the_dataset(tiny_mnist, tmp_path):
    with pytest.raises(idx.DataError, match=r"slice=500 is larger than the data: .*/src/MNIST/raw/"
                       r"train-images-idx3-ubyte holds only 120 images \(data.slice\)"):
        data.prepare("local", tmp_path / "root", local_dir=tiny_mnist, slice_step=500)


def test_synthetic_source_is_deterministic_and_readable(tmp_path):
    a = data.prepare("synthetic", tmp_path / "a", synthetic_sizes=(50, 20))
    b = data.prepare("synthetic", tmp_path / "b", synthetic_sizes=(50, 20))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert [f.sha256 for f in a.raw_files] == [f.sha256 for f in b.raw_files]
    assert int(a.train.images.float().std()) > 10  # not blank


def test_split_round_trip(tiny_mnist, tmp_path):
    prepared = data.prepare("local", tmp_path / "root", local_dir=tiny_mnist)
    data.save_split(prepared.test, tmp_path / "t.pt")
    back = data.load_split(tmp_path / "t.pt")
    assert torch.equal(back.images, prepared.test.images) and torch.equal(back.labels, prepared.test.labels)
    x = data.to_float(back.images)
    assert x.shape == (40, 1, 28, 28) and float(x.max()) == 1.0 and x.dtype == torch.float32


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
