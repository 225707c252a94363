"""MNIST data: fetch or stage the raw IDX files, check them, read them with torchvision, slice, save.

Every source ends the same way: four IDX files in `<root>/MNIST/raw/`, checked here byte by byte (so a bad
file is named before torchvision's reader sees it), then read by the real `torchvision.datasets.MNIST` class.
No Prefect, no W&B: this module only knows files and tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST

log = logging.getLogger(__name__)

# (split, kind) -> file stem, as published and as torchvision names them.
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# md5 of the published .gz files, straight from torchvision's list.
PUBLISHED_MD5 = dict(MNIST.resources)
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names the file."""


class DownloadError(RuntimeError):
    """No mirror delivered a file with the published md5 (network down, mirror gone, or a corrupt file)."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, classes: int = 10) -> list[int]:
        return torch.bincount(self.labels, minlength=classes).tolist()


@dataclass
class RawFileInfo:
    name: str
    sha256: str
    size: int
    md5: str | None = None  # md5 of the .gz as found, when there was one
    note: str = ""
    origin: str | None = None  # the file the user gave, named in errors found after staging


@dataclass
class PreparedData:
    train: Split
    test: Split
    source: str
    raw_files: list[RawFileInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tmp_name(dest: Path) -> Path:
    """A temporary name beside `dest`, unique to this writer: two flow runs may stage the same files at once."""
    return dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _write_atomic(dest: Path, blob: bytes) -> None:
    tmp = _tmp_name(dest)
    try:
        tmp.write_bytes(blob)
        tmp.replace(dest)  # a reader sees the old file or the new one, never a half-written one
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- IDX format


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def check_idx(path: Path, expect_magic: int, label: Path | str | None = None) -> int:
    """Check one uncompressed IDX file's header against its size; return the item count.

    Errors name `label` (the file the user gave, e.g. the .gz it was unpacked from), else `path`.
    """
    name = label or path
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16 if expect_magic == IMAGE_MAGIC else 8)
    ndim = 3 if expect_magic == IMAGE_MAGIC else 1
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{name}: truncated IDX file ({size} bytes, shorter than its header)")
    (magic,) = struct.unpack(">I", head[:4])
    if magic != expect_magic:
        raise DataError(f"{name}: wrong IDX magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if size < expected:
        raise DataError(f"{name}: truncated IDX file: {size} bytes, header promises {expected}")
    if size > expected:
        raise DataError(f"{name}: {size - expected} trailing bytes after the {dims[0]} items its header declares")
    return dims[0]


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


# ---------------------------------------------------------------------------------------------- sources


def raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _find(directory: Path, stem: str) -> Path | None:
    for base in (directory, raw_folder(directory)):
        for candidate in (base / stem, base / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def stage_local(local_dir: Path, root: Path) -> list[RawFileInfo]:
    """Copy (gunzipping where needed) the four IDX files from `local_dir` into `root/MNIST/raw`.

    A .gz whose md5 differs from the published file is accepted with a note: the shared subset and any
    re-packed copy differ from the published bytes and are still real MNIST.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise DataError(f"{local_dir}: not a directory")
    found = {stem: _find(local_dir, stem) for stem in FILES.values()}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise DataError(f"{local_dir}: missing MNIST file(s) {', '.join(missing)} (.gz or uncompressed)")
    dest = raw_folder(root)
    dest.mkdir(parents=True, exist_ok=True)
    infos = []
    for stem, src in found.items():
        sha, md5 = _digests(src)
        info = RawFileInfo(name=src.name, sha256=sha, size=src.stat().st_size, origin=str(src))
        gz = src.suffix == ".gz"
        if gz:
            info.md5 = md5
            published = PUBLISHED_MD5[src.name]
            info.note = "md5 matches the published file" if md5 == published else (
                f"md5 {md5} differs from the published {published}: accepted as a local copy"
            )
        else:
            info.note = "uncompressed local copy; the published md5 applies to the .gz only"
        staged = dest / stem
        if src.resolve() != staged.resolve():
            tmp = _tmp_name(staged)
            try:
                with (gzip.open if gz else open)(src, "rb") as fin, tmp.open("wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp.replace(staged)
            except (OSError, EOFError, zlib.error) as e:
                if gz:
                    raise DataError(f"{src}: corrupt gzip file ({e})") from e
                raise
            finally:
                tmp.unlink(missing_ok=True)
        infos.append(info)
    return infos  # the files' contents are checked by read_split, which names these sources (RawFileInfo.origin)


def download(root: Path, mirrors: list[str] | None) -> list[RawFileInfo]:
    """torchvision's real download (it checks the published md5s), from the given mirrors if any."""
    # A subclass named MNIST keeps torchvision's folder layout (it uses the class name) without
    # editing the global MNIST.mirrors list the way the tutorial does.
    cls = type("MNIST", (MNIST,), {"mirrors": list(mirrors)}) if mirrors else MNIST
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except RuntimeError as e:  # torchvision lists every mirror it tried; keep that, on one line
        raise DownloadError(" ".join(str(e).split())) from e
    infos = []
    for stem in FILES.values():
        gz = raw_folder(root) / f"{stem}.gz"
        path = gz if gz.exists() else raw_folder(root) / stem
        sha, md5 = _digests(path)
        infos.append(RawFileInfo(name=path.name, sha256=sha, size=path.stat().st_size,
                                 md5=md5 if path == gz else None,
                                 note="downloaded; md5 checked by torchvision" if path == gz else "already present"))
    return infos


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


def write_synthetic(root: Path, n_train: int, n_test: int) -> list[RawFileInfo]:
    dest = raw_folder(root)
    dest.mkdir(parents=True, exist_ok=True)
    infos = []
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        for kind, array in (("images", images), ("labels", labels)):
            path = dest / FILES[(split, kind)]
            _write_atomic(path, encode_idx(array))
            sha, _ = _digests(path)
            infos.append(RawFileInfo(name=path.name, sha256=sha, size=path.stat().st_size,
                                     note=f"synthetic seven-segment digits, seed {seed}"))
    return infos


# ---------------------------------------------------------------------------------------------- reading


def read_split(root: Path, train: bool, classes: int = 10, origins: dict[str, str] | None = None) -> Split:
    """Check the split's two raw files, then read them with torchvision's MNIST class.

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
    ds = MNIST(str(root), train=train, download=False)
    labels = ds.targets.to(torch.int64)
    if int(labels.max()) >= classes:
        bad = int((labels >= classes).sum())
        raise DataError(f"{names['labels']}: {bad} label(s) outside 0..{classes - 1} "
                        f"(max {int(labels.max())})")
    return Split(images=ds.data.contiguous(), labels=labels)


def take_every(split: Split, step: int) -> Split:
    if step > len(split):
        raise DataError(f"slice={step} is larger than the split's {len(split)} images")
    return Split(images=split.images[::step].contiguous(), labels=split.labels[::step].contiguous())


def prepare(source: str, root: Path, *, local_dir: Path | None = None, mirrors: list[str] | None = None,
            slice_step: int = 1, classes: int = 10, synthetic_sizes: tuple[int, int] = (6000, 1000)) -> PreparedData:
    """Fetch or stage the raw files for `source`, check and read them, keep every `slice_step`-th image."""
    root = Path(root)
    if source == "download":
        raw_files = download(root, mirrors)
    elif source == "local":
        if local_dir is None:
            raise DataError("source 'local' needs a local directory")
        raw_files = stage_local(local_dir, root)
    elif source == "synthetic":
        raw_files = write_synthetic(root, *synthetic_sizes)
    else:
        raise DataError(f"unknown data source {source!r}; use 'download', 'local' or 'synthetic'")
    origins = {f.name.removesuffix(".gz"): f.origin for f in raw_files if f.origin}
    train = take_every(read_split(root, True, classes, origins), slice_step)
    test = take_every(read_split(root, False, classes, origins), slice_step)
    notes = [f"{f.name}: {f.note}" for f in raw_files if f.note]
    for n in notes:
        log.info(n)
    return PreparedData(train=train, test=test, source=source, raw_files=raw_files, notes=notes)


def save_split(split: Split, path: Path) -> None:
    torch.save({"images": split.images, "labels": split.labels}, path)


def load_split(path: Path) -> Split:
    # weights_only: a dataset file is data, never code.
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return Split(images=blob["images"], labels=blob["labels"])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1]: what transforms.ToTensor() gives per image."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0)
