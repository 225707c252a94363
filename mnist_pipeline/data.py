"""MNIST data: fetch or stage the raw IDX files, check them, read them, slice, save.

Every source ends the same way: four IDX files in torchvision's MNIST layout and names staged in a private folder,
checked here byte by byte (so a bad file is named before anything reads it), read into the tensors torchvision's
`MNIST` class makes of them (`idx.read_idx`; a test compares the two), and kept read-only in a folder named by
their content (`<root>/sha256/<digest[:16]>/MNIST/raw/`), which the dataset records: a later run with other
settings never rewrites what an earlier dataset was made from.
No Prefect, no W&B: this module only knows files and tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: a skipped run never needs it
    import torch

from mnist_pipeline import idx
from mnist_pipeline.idx import (
    FILES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    DataError,
    RawFileInfo,
    check_idx,
    copy_idx,
    encode_idx,
    file_digests,
    raw_folder,
)
from mnist_pipeline.mirrors import DEFAULT_TIMEOUT, download
from prefect_wandb import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, classes: int = 10) -> list[int]:
        import torch

        return torch.bincount(self.labels, minlength=classes).tolist()


@dataclass
class PreparedData:
    train: Split
    test: Split
    source: str
    raw_files: list[RawFileInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None  # the content-addressed folder the raw files were read from


# ---------------------------------------------------------------------------------------------- sources


def _find(directory: Path, stem: str) -> Path | None:
    for base in (directory, raw_folder(directory)):
        for candidate in (base / stem, base / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def stage_local(local_dir: Path, incoming: Path) -> list[RawFileInfo]:
    """Copy (gunzipping where needed) the four IDX files from `local_dir` into `incoming/MNIST/raw`.

    A .gz whose md5 differs from the published file is accepted with a note: the shared subset and any
    re-packed copy differ from the published bytes and are still real MNIST.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise DataError(f"{local_dir}: not a directory")
    located = {stem: _find(local_dir, stem) for stem in FILES.values()}
    missing = [stem for stem, p in located.items() if p is None]
    if missing:
        raise DataError(f"{local_dir}: missing MNIST file(s) {', '.join(missing)} (.gz or uncompressed)")
    found = {stem: p for stem, p in located.items() if p is not None}
    dest = raw_folder(incoming)
    dest.mkdir(parents=True, exist_ok=True)
    infos = []
    for stem, src in found.items():
        sha, md5 = file_digests(src)
        info = RawFileInfo(name=src.name, sha256=sha, size=src.stat().st_size, origin=str(src))
        gz = src.suffix == ".gz"
        if gz:
            info.md5 = md5
            published = idx.PUBLISHED_MD5[src.name]
            info.note = "md5 matches the published file" if md5 == published else (
                f"md5 {md5} differs from the published {published}: accepted as a local copy"
            )
        else:
            info.note = "uncompressed local copy; the published md5 applies to the .gz only"
        copy_idx(src, dest / stem, gz)
        infos.append(info)
    return infos  # the files' contents are checked by read_split, which names these sources (RawFileInfo.origin)


# Seven-segment strokes per digit, drawn with jitter and noise: learnable, deterministic, nothing to download.
_SEGMENTS = {  # a b c d e f g (top, top-right, bottom-right, bottom, bottom-left, top-left, middle)
    0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i, digit in enumerate(labels):
        x0, y0 = rng.integers(6, 11), rng.integers(3, 7)
        w, h = rng.integers(9, 13), rng.integers(9, 11)
        t = int(rng.integers(2, 4))
        seg = {
            "a": (y0, y0 + t, x0, x0 + w), "g": (y0 + h, y0 + h + t, x0, x0 + w),
            "d": (y0 + 2 * h, y0 + 2 * h + t, x0, x0 + w),
            "f": (y0, y0 + h + t, x0, x0 + t), "b": (y0, y0 + h + t, x0 + w - t, x0 + w),
            "e": (y0 + h, y0 + 2 * h + t, x0, x0 + t), "c": (y0 + h, y0 + 2 * h + t, x0 + w - t, x0 + w),
        }
        for s in _SEGMENTS[int(digit)]:
            r0, r1, c0, c1 = seg[s]
            images[i, r0:min(r1, 28), c0:min(c1, 28)] = rng.uniform(0.7, 1.0)
    images += rng.normal(0, 0.08, images.shape).astype(np.float32)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def write_synthetic(incoming: Path, n_train: int, n_test: int) -> list[RawFileInfo]:
    dest = raw_folder(incoming)
    dest.mkdir(parents=True, exist_ok=True)
    infos = []
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        for kind, array in (("images", images), ("labels", labels)):
            path = dest / FILES[(split, kind)]
            storage.write_bytes_atomic(path, encode_idx(array))
            sha, _ = file_digests(path)
            infos.append(RawFileInfo(name=path.name, sha256=sha, size=path.stat().st_size,
                                     note=f"synthetic seven-segment digits, seed {seed}"))
    return infos


# ---------------------------------------------------------------------------------------------- the raw store


def _set_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{stem} {digests[stem]}\n" for stem in sorted(digests)).encode()).hexdigest()


def _stored_matches(folder: Path, digests: dict[str, str]) -> bool:
    raw = raw_folder(folder)
    return all((raw / stem).is_file() and file_digests(raw / stem)[0] == sha for stem, sha in digests.items())


def store_raw(incoming: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """Move the four staged IDX files of `incoming` into `root/sha256/<digest[:16]>/MNIST/raw`, read-only.

    The folder is named by the files' content, so a later run with other data settings never rewrites the files
    an earlier dataset recorded (an audit then verifies what was really used). A folder of the same name is
    reused when its files verify; one whose files were changed since is moved aside (`.corrupt-*`, kept for
    inspection) and replaced by the new, verified copy. Returns (folder, stem -> sha256)."""
    raw = raw_folder(incoming)
    digests = {stem: file_digests(raw / stem)[0] for stem in FILES.values()}
    final = Path(root) / "sha256" / _set_digest(digests)[:16]
    for stem in digests:
        with storage.writing(raw / stem, "storing"):
            with (raw / stem).open("rb") as f:
                os.fsync(f.fileno())
            (raw / stem).chmod(0o444)  # immutable by intent: a dataset's record points at these bytes
    if final.is_dir():
        if _stored_matches(final, digests):
            return final, digests
        aside = final.with_name(f"{final.name}.corrupt-{uuid.uuid4().hex[:8]}")
        log.warning("stored raw files %s no longer match their names' content; moved aside to %s and stored again",
                    final, aside.name)
        final.rename(aside)
    try:
        with storage.writing(final, "storing"):
            incoming.rename(final)
    except OSError:
        if not (final.is_dir() and _stored_matches(final, digests)):  # a concurrent run stored the same a moment ago
            raise
    return final, digests


# ---------------------------------------------------------------------------------------------- reading


def read_split(root: Path, train: bool, classes: int = 10, origins: dict[str, str] | None = None) -> Split:
    """Check the split's two raw files, then read them (as torchvision's MNIST class does: `idx.read_idx`).

    `origins` maps a raw file's stem to the file the user gave, so errors name that one."""
    split = "train" if train else "test"
    raw = raw_folder(root)
    names = {kind: (origins or {}).get(FILES[(split, kind)], raw / FILES[(split, kind)])
             for kind in ("images", "labels")}
    counts = {}
    for kind, magic in (("images", IMAGE_MAGIC), ("labels", LABEL_MAGIC)):
        path = raw / FILES[(split, kind)]
        if not path.is_file():
            raise DataError(f"{path}: missing MNIST file")
        counts[kind] = check_idx(path, magic, label=names[kind])
    if counts["images"] != counts["labels"]:
        raise DataError(f"{names['images']} holds {counts['images']} images but "
                        f"{names['labels']} holds {counts['labels']} labels")
    if counts["images"] == 0:
        raise DataError(f"{names['images']}: holds no images")
    import torch

    images = torch.from_numpy(idx.read_idx(raw / FILES[(split, "images")], IMAGE_MAGIC))
    labels = torch.from_numpy(idx.read_idx(raw / FILES[(split, "labels")], LABEL_MAGIC)).to(torch.int64)
    if int(labels.max()) >= classes:
        bad = int((labels >= classes).sum())
        raise DataError(f"{names['labels']}: {bad} label(s) outside 0..{classes - 1} "
                        f"(max {int(labels.max())})")
    return Split(images=images, labels=labels)


def take_every(split: Split, step: int, name: Path | str | None = None) -> Split:
    if step > len(split):
        where = f"{name} holds only" if name else "the split has only"
        raise DataError(f"slice={step} is larger than the data: {where} {len(split)} images (data.slice)")
    return Split(images=split.images[::step].contiguous(), labels=split.labels[::step].contiguous())


def prepare(source: str, root: Path, *, local_dir: Path | None = None, mirrors: list[str] | None = None,
            slice_step: int = 1, classes: int = 10, synthetic_sizes: tuple[int, int] = (6000, 1000),
            timeout: float = DEFAULT_TIMEOUT) -> PreparedData:
    """Fetch or stage the raw files for `source` into a content-addressed folder under `root`, check and read
    them, keep every `slice_step`-th image."""
    root = Path(root)
    incoming = root / "sha256" / f".incoming-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with storage.writing(incoming.parent, "creating"):
        incoming.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source == "download":
            raw_files = download(root, mirrors, incoming, timeout)
        elif source == "local":
            if local_dir is None:
                raise DataError("source 'local' needs a local directory")
            raw_files = stage_local(local_dir, incoming)
        elif source == "synthetic":
            raw_files = write_synthetic(incoming, *synthetic_sizes)
        else:
            raise DataError(f"unknown data source {source!r}; use 'download', 'local' or 'synthetic'")
        origins = {f.name.removesuffix(".gz"): f.origin for f in raw_files if f.origin}
        # Checked before storing: a malformed file never enters the store.
        train = read_split(incoming, True, classes, origins)
        test = read_split(incoming, False, classes, origins)
        folder, digests = store_raw(incoming, root)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    for f in raw_files:
        stem = f.name.removesuffix(".gz")
        f.stored = str(raw_folder(folder) / stem)
        f.stored_sha256, f.stored_size = digests[stem], (raw_folder(folder) / stem).stat().st_size
    names = {split: origins.get(FILES[(split, "images")], raw_folder(folder) / FILES[(split, "images")])
             for split in ("train", "test")}
    train = take_every(train, slice_step, names["train"])
    test = take_every(test, slice_step, names["test"])
    notes = [f"{f.name}: {f.note}" for f in raw_files if f.note]
    for n in notes:
        log.info(n)
    return PreparedData(train=train, test=test, source=source, raw_files=raw_files, notes=notes, folder=folder)


# What a raw file's record in `dataset.json` holds: its content, never where it was found or stored.
RAW_CONTENT_FIELDS = ("name", "sha256", "size", "md5", "stored_sha256", "stored_size")


def dataset_record(prepared: PreparedData, slice_step: int, classes: int = 10) -> dict:
    """What `dataset.json` holds, a part of the dataset's content address: the raw files' digests and sizes, the
    settings and the splits' sizes and class counts, and nothing that depends on where the files were found or
    stored (paths, mirror URLs, whether the download cache already held them). The same raw files and settings
    give the same record, in any folder; where they came from is the artifact's metadata (`provenance`)."""
    return {
        "source": prepared.source,
        "slice": slice_step,
        "raw_files": [{k: getattr(f, k) for k in RAW_CONTENT_FIELDS} for f in prepared.raw_files],
        "sizes": {"train": len(prepared.train), "test": len(prepared.test)},
        "class_counts": {"train": prepared.train.class_counts(classes), "test": prepared.test.class_counts(classes)},
    }


def provenance(prepared: PreparedData, source_location: Path | str | None, mirrors: list[str] | None) -> dict:
    """Where the raw files came from and where their read-only copy is: the dataset's metadata (lineage store,
    W&B), shown by the audit, outside the files its digest is computed from."""
    return {
        "source_location": str(source_location) if source_location is not None else None,
        "mirrors": mirrors,
        "raw_store": str(prepared.folder) if prepared.folder else None,
        "raw_files": [vars(f) for f in prepared.raw_files],  # with origin and stored paths, and each file's note
        "notes": prepared.notes,
    }


def save_split(split: Split, path: Path) -> None:
    """torch.save, atomically: serialised in memory, so a full disk is a StorageError naming `path` (torch.save
    itself reports one as `RuntimeError: [enforce fail at inline_container.cc] ...`)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"images": split.images, "labels": split.labels}, buf)
    storage.write_bytes_atomic(path, buf.getbuffer())


def load_split(path: Path) -> Split:
    # weights_only: a dataset file is data, never code.
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    return Split(images=blob["images"], labels=blob["labels"])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1]: what transforms.ToTensor() gives per image."""
    return images.unsqueeze(1).float().div_(255.0)
