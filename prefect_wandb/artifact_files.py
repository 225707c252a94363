"""Where an artifact version's files are: a local folder (the default) or an S3 location with a local cache.

`LineageSettings.artifacts` is a folder, or `s3://bucket/prefix` (s3fs through fsspec). With a URL, a stage still
stages and finalizes into a local folder, the cache (`cache_root`: `$PREFECT_WANDB_ARTIFACTS_CACHE/<bucket>/<prefix>`,
default under `$XDG_CACHE_HOME` or `~/.cache`: `prefect-wandb/artifacts/<bucket>/<prefix>`), with the artifacts
folder's layout (`layout.py`; `.staging`, `.checkpoints`, `.trash` stay there); each new version folder is then
uploaded to its content-addressed key `s3://bucket/prefix/<type>/<name>/<digest16>/<relpath>` and read back, every
object's sha256 compared with the manifest, before the store commits it (`publish`). The store records the version's
URL, which any host maps to its own cache (`local_folder`), so a version exists for readers once the store has it:
an upload whose commit never came is invisible, and `gc` removes it.

Credentials and endpoint come only from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, or botocore's own files), which botocore reads itself: a URL with keys in it is
refused at the door, so no key is ever in a URL, a record, a log line, a W&B config or a Prefect parameter.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, ValidationInfo, WithJsonSchema

from prefect_wandb.layout import folder_name
from prefect_wandb.locations import LocationError, one_line_url, redact, scheme_of
from prefect_wandb.records import FileRecord
from prefect_wandb.refs import DigestMismatch

__all__ = ["ARTIFACT_SCHEMES", "CACHE_ENV", "ArtifactsLocationField", "RemoteArtifactsError", "artifacts_location",
           "cache_root", "check_remote", "is_remote", "local_folder", "publish", "readable_folder", "remote_folders",
           "remote_problem", "remove_remote", "version_url"]

ARTIFACT_SCHEMES = ("s3",)
CACHE_ENV = "PREFECT_WANDB_ARTIFACTS_CACHE"
# S3's bucket names: 3-63 lower-case letters, digits, '-' and '.'
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FOLDER_NAME = re.compile(r"[0-9a-f]{16}")
# `user[:password]@` before the bucket (the password may hold '/')
_USERINFO = re.compile(r"[^@/]*(:[^@]*)?@")
# one request's bounds: a stopped endpoint fails a stage in seconds, not after botocore's default minute of retries
_CLIENT = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


class RemoteArtifactsError(RuntimeError):
    """The artifacts' S3 location cannot be used (no such bucket, an unreachable endpoint, refused credentials, an
    upload that failed or read back different): one line naming the URL, never a key."""


def is_remote(location: object) -> bool:
    """Whether a recorded path or an artifacts location is a URL (this module's business) rather than a folder."""
    return isinstance(location, str) and scheme_of(location) is not None


def artifacts_location(value: object, field: str = "artifacts") -> Path | str:
    """An artifacts location checked at the door: a path stays a `Path`; `s3://bucket[/prefix]` becomes that URL
    without a trailing '/'; keys in the URL, another scheme, a bad bucket name or a query: LocationError naming
    `field`, one line, the would-be password masked."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise LocationError(f"{field}: a folder or an s3://bucket/prefix URL, not {type(value).__name__}")
    scheme = scheme_of(value)
    if scheme is None:
        if not value.strip():
            raise LocationError(f"{field}: an empty location")
        return Path(value)
    shown = one_line_url(value)
    if scheme not in ARTIFACT_SCHEMES:
        raise LocationError(f"{field}: {shown} is not an artifacts location (scheme {scheme}://): give a folder or "
                            "s3://bucket/prefix")
    rest = value[len(scheme) + 3:]
    bucket, _, prefix = rest.partition("/")
    if _USERINFO.match(rest):  # not shown: a secret key may hold '/', which `redact` would not mask
        raise LocationError(f"{field}: an {scheme}:// URL with credentials in it: put keys in AWS_ACCESS_KEY_ID/"
                            "AWS_SECRET_ACCESS_KEY, not in the URL")
    if any(c in rest for c in "?#\\") or any(ord(c) < 33 or ord(c) == 127 for c in rest):
        raise LocationError(f"{field}: {shown} is not a plain s3://bucket/prefix URL (no query, fragment, spaces)")
    if not _BUCKET.fullmatch(bucket):
        raise LocationError(f"{field}: {shown}: {bucket!r} is not an S3 bucket name (3-63 lower-case letters, "
                            "digits, '-' and '.')")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise LocationError(f"{field}: {shown}: '.' and '..' are not prefix segments")
    return "/".join([f"s3://{bucket}", *parts])


def _validate(value: object, info: ValidationInfo) -> Path | str:
    return artifacts_location(value, info.field_name or "artifacts")


# The pydantic type of `LineageSettings.artifacts`: a Path, or an s3:// URL (a str) checked at the door.
ArtifactsLocationField = Annotated[
    Path | str, PlainValidator(_validate), PlainSerializer(str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "path-or-url"})]


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key.strip("/")


def cache_root(url: str) -> Path:
    """The local folder that stands for `url` (an artifacts location or a version's URL) on this host:
    `$PREFECT_WANDB_ARTIFACTS_CACHE/<bucket>/<key>`, default `$XDG_CACHE_HOME` (else ~/.cache)
    `/prefect-wandb/artifacts/<bucket>/<key>`. Deterministic, so every reader of a recorded URL finds it."""
    if os.environ.get(CACHE_ENV):
        base = Path(os.environ[CACHE_ENV])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefect-wandb" / "artifacts"
    bucket, key = _split(url)
    parts = key.split("/") if key else []
    if not _BUCKET.fullmatch(bucket) or any(p in ("", ".", "..") for p in parts):  # a record's path, not our own
        raise LocationError(f"{redact(url)} is not an s3://bucket/prefix URL this cache can hold")
    return (base.expanduser() / bucket).joinpath(*parts).resolve()


def version_url(root: str, type: str, name: str, digest: str) -> str:
    """The content-addressed URL of one version: `<root>/<type>/<name>/<digest16>` (the layout's, remotely)."""
    return f"{root}/{type}/{name}/{folder_name(digest)}"


# the AWS variables botocore reads: a filesystem is made again when one of them changes (a rotated key, another
# endpoint), else reused (making one, its botocore session and client, takes about 0.1 s a call)
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_made: dict[tuple, Any] = {}


def _fs() -> Any:
    """s3fs's filesystem, configured by botocore from the standard AWS variables only (nothing passed here); one
    per process and value of those variables, so a changed environment is what it uses."""
    import fsspec

    key = (os.getpid(), *(os.environ.get(v) for v in _AWS_ENV))
    if key not in _made:
        _made.clear()  # the previous environment's, or a forked parent's
        _made[key] = fsspec.filesystem("s3", skip_instance_cache=True, config_kwargs=dict(_CLIENT))
    return _made[key]


def _why(e: BaseException) -> str:
    """An S3 failure in one line, without a key (botocore's messages hold none; redact anyway)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return redact(f"{type(e).__name__}: {text}")[:300]


def check_remote(root: str) -> None:
    """The preflight of an S3 artifacts location: its bucket exists and answers with these credentials (one
    listing of the prefix); RemoteArtifactsError in one line otherwise, before any work starts."""
    bucket, key = _split(root)
    fs = _fs()
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
    except FileNotFoundError:
        raise RemoteArtifactsError(f"artifacts: {root}: no bucket {bucket!r} at the S3 endpoint "
                                   f"({os.environ.get('AWS_ENDPOINT_URL') or 'AWS'}): create it, or give another"
                                   ) from None
    except Exception as e:  # unreachable endpoint, refused credentials, a timeout
        raise RemoteArtifactsError(f"artifacts: {root} cannot be reached ({_why(e)}): check AWS_ENDPOINT_URL and "
                                   "the AWS credentials") from None


_ONE_GET = 64 << 20  # objects up to this size are read back in one GET (no HEAD first), larger ones streamed


def _sha256_remote(fs: Any, path: str, size: int) -> str:
    if size <= _ONE_GET:
        return hashlib.sha256(fs.cat_file(path)).hexdigest()
    h = hashlib.sha256()
    with fs.open(path, "rb", cache_type="none") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remote_mismatch(fs: Any, url: str, files: Iterable[FileRecord]) -> str | None:
    """Why the objects under `url` differ from `files` (the first one missing or with another sha256), else None."""
    for f in files:
        path = f"{url[len('s3://'):]}/{f.relpath}"
        try:
            actual = _sha256_remote(fs, path, f.size)
        except FileNotFoundError:
            return f"{url}/{f.relpath} is missing"
        if actual != f.sha256:
            return f"{url}/{f.relpath}: sha256 {actual} does not match the recorded {f.sha256}"
    return None


def publish(local: Path, url: str, files: tuple[FileRecord, ...]) -> bool:
    """Make the objects under `url` hold exactly `local`'s files (`files`, its manifest), read back and compared by
    sha256 before returning: a version already there (its key is its content) is verified, not uploaded again;
    one that differs (a partial or tampered upload) is uploaded again. True when it uploaded, False when S3 held the
    version already. RemoteArtifactsError in one line when S3 fails."""
    fs = _fs()
    try:
        if _remote_mismatch(fs, url, files) is None:
            return False
        for f in files:
            fs.put_file(str(Path(local) / f.relpath), f"{url[len('s3://'):]}/{f.relpath}")
        problem = _remote_mismatch(fs, url, files)
    except Exception as e:
        raise RemoteArtifactsError(f"uploading {url} failed ({_why(e)}): nothing was recorded") from None
    if problem:
        raise RemoteArtifactsError(f"uploading {url}: read back different ({problem}): nothing was recorded")
    return True


def remote_problem(url: str, files: tuple[FileRecord, ...]) -> str | None:
    """Why the objects under `url` are not `files` (each read from S3, no cache, and hashed: the first one missing or
    with another sha256), None when every one matches; RemoteArtifactsError in one line when S3 fails."""
    try:
        return _remote_mismatch(_fs(), url, files)
    except Exception as e:
        raise RemoteArtifactsError(f"reading {url} failed ({_why(e)})") from None


def _download(fs: Any, url: str, files: tuple[FileRecord, ...], into: Path) -> None:
    """Every file of `files` from `url` into `into`, each hashed as it is written: DigestMismatch naming the object
    whose sha256 is not the recorded one."""
    for f in files:
        dest = into / f.relpath
        if not dest.resolve().is_relative_to(into.resolve()):
            raise DigestMismatch(f"{url}/{f.relpath}: recorded file path escapes its artifact folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        try:
            with fs.open(f"{url[len('s3://'):]}/{f.relpath}", "rb", cache_type="none") as src, open(dest, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise DigestMismatch(f"{url}/{f.relpath}: missing (recorded sha256 {f.sha256})") from None
        if h.hexdigest() != f.sha256:
            raise DigestMismatch(f"{url}/{f.relpath}: sha256 {h.hexdigest()} does not match the recorded "
                                 f"{f.sha256}: refused")


def _sizes_match(folder: Path, files: Iterable[FileRecord]) -> bool:
    try:
        return all((folder / f.relpath).stat().st_size == f.size for f in files)
    except OSError:
        return False


def local_folder(path: str | Path, files: tuple[FileRecord, ...] | None = None) -> Path:
    """The local folder of a recorded artifact path: a folder is returned as it is (its reader verifies it, as
    always); a URL is mapped to this host's cache (`cache_root`), downloaded there if missing or incomplete (to a
    temporary folder, every file's sha256 checked against `files`, then renamed into place), so a cache copy was
    verified when it came. `files`: the record's (None: return the cache folder, whatever it holds).
    DigestMismatch (one line) when S3 holds other bytes than the record says; RemoteArtifactsError when S3 fails."""
    if not is_remote(path):
        return Path(path)
    url = str(path)
    folder = cache_root(url)
    if files is None or (folder.is_dir() and _sizes_match(folder, files)):
        return folder
    tmp = folder.parent / f".download-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            _download(_fs(), url, files, tmp)
        except DigestMismatch:
            raise
        except Exception as e:
            raise RemoteArtifactsError(f"downloading {url} failed ({_why(e)})") from None
        if folder.exists():  # an incomplete copy (sizes differ): this verified one replaces it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder.is_dir() and _sizes_match(folder, files)):  # not another reader's copy a moment ago
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def remote_folders(root: str) -> dict[str, tuple[int, datetime | None]]:
    """Every folder under `root` at the place of a version folder (`<type>/<name>/<digest16>`, type not hidden),
    whether or not a store record claims it: its URL -> (its bytes, its newest object's time); RemoteArtifactsError when S3
    fails."""
    fs = _fs()
    bucket, key = _split(root)
    base = f"{bucket}/{key}" if key else bucket
    try:
        found = fs.find(base, withdirs=False, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as e:
        raise RemoteArtifactsError(f"listing {root} failed ({_why(e)})") from None
    out: dict[str, tuple[int, datetime | None]] = {}
    for obj, info in sorted(found.items()):
        rel = obj[len(base):].strip("/").split("/")
        if len(rel) < 4 or rel[0].startswith(".") or not _FOLDER_NAME.fullmatch(rel[2]):
            continue
        folder = f"{root}/{'/'.join(rel[:3])}"
        size, newest = out.get(folder, (0, None))
        when = info.get("LastModified")
        if isinstance(when, datetime) and (newest is None or when > newest):
            newest = when
        out[folder] = (size + int(info.get("size") or 0), newest)
    return out


def remove_remote(url: str) -> None:
    """Delete every object under `url` (a version folder); RemoteArtifactsError when S3 refuses."""
    fs = _fs()
    try:
        fs.rm(url[len("s3://"):], recursive=True)
    except FileNotFoundError:
        return
    except Exception as e:
        raise RemoteArtifactsError(f"removing {url} failed ({_why(e)})") from None


def readable_folder(path: str | Path, files: tuple[FileRecord, ...]) -> Path:
    """`local_folder` for a reader that reports what it finds rather than failing (audit, rollback, reproduce's
    check of its inputs, the W&B comparison): a version S3 cannot give (unreachable, other bytes than recorded) is
    its cache folder as it is, whose missing or differing files that reader then names."""
    try:
        return local_folder(path, files)
    except (DigestMismatch, RemoteArtifactsError):
        return local_folder(path)
