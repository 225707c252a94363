"""MNIST's four raw files: their names, the published md5s, the IDX format and its checks, the file record.

No torch, no Prefect, no W&B: bytes and numpy only.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefect_wandb import storage

# (split, kind) -> file stem, as published and as torchvision names them.
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# md5 of the published .gz files: torchvision's list (`MNIST.resources`; a test keeps the two equal), written out
# so that importing this module does not import torchvision (1-2 s; a cached or skipped run never reads IDX files).
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names the file."""

class ChecksumError(DataError):
    """A mirror delivered a file whose md5 is not the published one: a retry would fetch the same bytes."""



@dataclass
class RawFileInfo:
    name: str  # as found at the source (e.g. train-images-idx3-ubyte.gz)
    sha256: str  # of that source file
    size: int
    md5: str | None = None  # md5 of the .gz as found, when there was one
    note: str = ""
    origin: str | None = None  # the file or URL the user gave, named in errors found after staging
    stored: str | None = None  # the immutable, content-addressed IDX copy this dataset was read from
    stored_sha256: str | None = None
    stored_size: int | None = None



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



def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """The items of an uncompressed IDX file that `check_idx` passed: a uint8 array of (count, 28, 28) images or
    (count,) labels, as torchvision's MNIST class reads them (`tests/test_data.py` compares the two). Read here
    rather than through torchvision: importing it costs every process that prepares a dataset 1.3 s of CPU (its
    package imports torch's compiler stack), a quarter of a tiny run's imports."""
    ndim = 3 if expect_magic == IMAGE_MAGIC else 1
    with path.open("rb") as f:
        dims = struct.unpack(f">{ndim}I", f.read(4 + 4 * ndim)[4:])
        return np.fromfile(f, dtype=np.uint8).reshape(dims)


def file_digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()



def raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"



def copy_idx(src: Path, dest: Path, gz: bool) -> None:
    """Copy (gunzipping when `gz`) `src` to `dest`; a corrupt gzip names `src`, a full disk names `dest`."""
    try:
        with storage.writing(dest), (gzip.open if gz else open)(src, "rb") as fin, dest.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{src}: corrupt gzip file ({e})") from e

