"""MNIST's published files from HTTP(S) or file:// mirrors: md5-checked, atomic, bounded by a timeout, a mirror
that sent wrong bytes not asked again, errors sorted into worth-a-retry (DownloadError) and not (DataError).
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import http.client
import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from mnist_pipeline import idx
from mnist_pipeline.idx import ChecksumError, DataError, RawFileInfo, copy_idx, file_digests, raw_folder
from prefect_wandb import storage

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """No mirror could be reached or answered in time: worth a retry (the task retries it)."""



class MirrorRefused(DataError):
    """A mirror answered with an HTTP client error (404 Not Found, 403 Forbidden...): a retry gets the same answer."""


# HTTP client errors that say "not now" rather than "not here": worth a retry like a network error.
TRANSIENT_HTTP = frozenset({408, 425, 429})
# A mirror that sent a file with the wrong md5 is not downloaded again for this long in this process (a retry of
# prepare-data after another mirror's network error would fetch the same wrong bytes again).
REFUSED_FOR_S = 3600.0
_refused: dict[tuple[str, str], tuple[float, str]] = {}  # (url, expected md5) -> (monotonic time, why)


DEFAULT_TIMEOUT = 30.0  # seconds a mirror may take to connect or to send the next bytes


def fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Download `url` to `dest` (atomically), or raise: ChecksumError when the md5 is not `md5` (nothing is kept,
    and the URL is not downloaded again for REFUSED_FOR_S), MirrorRefused on an HTTP client error (404...),
    DownloadError when the mirror cannot be reached, answers 5xx or stops answering for `timeout` seconds (a retry
    may help).

    urllib handles http(s):// and file:// alike; `timeout` bounds the connect and every read (torchvision's
    helper has none, and reads `response.length`, which a file:// response lacks)."""
    seen = _refused.get((url, md5))
    if seen is not None and time.monotonic() - seen[0] < REFUSED_FOR_S:
        raise ChecksumError(f"{seen[1]} (refused {time.monotonic() - seen[0]:.0f} s ago: not downloaded again)")
    tmp = storage.tmp_name(dest)
    h = hashlib.md5()
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, storage.writing(dest), tmp.open("wb") as f:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    h.update(chunk)
                    f.write(chunk)
        except storage.StorageError:
            raise
        except urllib.error.HTTPError as e:
            status = f"HTTP {e.code} {phrase(e.code, e.reason)}"
            if 400 <= e.code < 500 and e.code not in TRANSIENT_HTTP:
                raise MirrorRefused(f"{url}: {status}") from None
            raise DownloadError(f"{url}: {status}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, TimeoutError | socket.timeout) or "timed out" in str(reason):
                reason = f"no answer within {timeout:g} s (data.timeout)"
            raise DownloadError(f"{url}: {reason}") from e
        if h.hexdigest() != md5:
            why = (f"{url}: md5 {h.hexdigest()} expected {md5} (the published file); the download was refused and "
                   "not kept, and is not retried (the mirror would send the same bytes)")
            _refused[(url, md5)] = (time.monotonic(), why)
            raise ChecksumError(why)
        tmp.replace(dest)
    finally:
        with contextlib.suppress(OSError):  # a read-only disk refuses even to unlink what is not there
            tmp.unlink(missing_ok=True)


def phrase(code: int, reason: object) -> str:
    """The standard reason phrase of an HTTP status (a server's own, e.g. "File not found", when it has none)."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return str(reason or "")


def download(root: Path, mirrors: list[str] | None, incoming: Path,
             timeout: float = DEFAULT_TIMEOUT) -> list[RawFileInfo]:
    """The published .gz files, from the mirrors in order (torchvision's list by default), into the download
    cache `root/MNIST/raw` (kept: a file there with the published md5 is not fetched again), then unpacked into
    `incoming/MNIST/raw`. Each file's md5 must be the published one."""
    if not mirrors:
        from torchvision.datasets import MNIST  # torchvision's own list of mirrors

        mirrors = list(MNIST.mirrors)
    cache = raw_folder(root)
    cache.mkdir(parents=True, exist_ok=True)
    dest = raw_folder(incoming)
    dest.mkdir(parents=True, exist_ok=True)
    infos = []
    for stem in idx.FILES.values():
        name = f"{stem}.gz"
        gz, published = cache / name, idx.PUBLISHED_MD5[name]
        origin, note = str(gz), "already downloaded; md5 matches the published file"
        if not (gz.is_file() and file_digests(gz)[1] == published):
            errors: list[Exception] = []
            for mirror in mirrors:
                url = f"{mirror.rstrip('/')}/{name}"
                try:
                    fetch(url, gz, published, timeout)
                except (DownloadError, ChecksumError, MirrorRefused) as e:
                    log.warning("%s", e)
                    errors.append(e)
                    continue
                origin, note = url, "downloaded; md5 matches the published file"
                break
            else:
                text = "; ".join(str(e) for e in errors)
                if all(isinstance(e, ChecksumError) for e in errors):
                    raise ChecksumError(f"{name}: no mirror has the published file: {text}")
                if all(isinstance(e, DataError) for e in errors):  # refused or wrong, nowhere a network error
                    raise MirrorRefused(f"{name}: no mirror has it (not retried): {text}")
                raise DownloadError(f"{name}: no mirror delivered it: {text}")
        sha, md5 = file_digests(gz)
        copy_idx(gz, dest / stem, gz=True)
        infos.append(RawFileInfo(name=name, sha256=sha, size=gz.stat().st_size, md5=md5, note=note, origin=origin))
    return infos
