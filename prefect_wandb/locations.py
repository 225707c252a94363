"""Where the lineage store is: a path (an embedded SQLite file, the default) or a database URL (PostgreSQL through
psycopg 3: `postgresql+psycopg://user@host:port/db`), and how such a URL is shown without its password.

- `store_location(value, field)`: what a setting, a config field or `--lineage-db` gives, checked at the door: a
  path stays a `Path` (relative and `~` paths resolve later, as before); `postgresql+psycopg://` (or libpq's
  `postgresql://`, given the psycopg driver) becomes a `StoreURL`; any other scheme (`mysql://`, `s3://`,
  `http://`, ...) is a `LocationError`, one line naming the field, never a folder name.
- `path_only(value, field)`: a field that must be a path refuses a URL the same way.
- `StoreURL`: the URL, whose password never shows: `str()`, `repr()` and f-strings give it masked
  (`user:***@`, SQLAlchemy's `render_as_string(hide_password=True)`); JSON (a run's recorded config, W&B's config,
  a Prefect parameter or block) gets it without the password (`without_password`), which libpq completes from
  `PGPASSWORD` or `~/.pgpass` where it is used again; only `secret()` (the engine) has the password.

Pure: SQLAlchemy's URL parser is imported only when a URL is met.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, PlainSerializer, PlainValidator, ValidationInfo, WithJsonSchema
from pydantic_core import core_schema

__all__ = ["STORE_SCHEMES", "LocationError", "StoreLocation", "StoreLocationField", "StoreURL", "is_url", "masked", "one_line_url", "path_only", "redact", "scrub_argv",
           "store_location"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# the schemes a store may have: PostgreSQL through psycopg 3 (libpq's plain `postgresql://` gets that driver)
STORE_SCHEMES = ("postgresql+psycopg", "postgresql")
# `scheme://user:password@` in any text: the password replaced (for error messages that quote what was given)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]*@")


class LocationError(ValueError):
    """A location that is not one this field takes (a URL where a path is expected, an unknown scheme, a URL
    without a database): one line naming the field, the password masked."""


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it replaced by `***`."""
    return _USERINFO.sub(r"\1***@", text)


def scrub_argv() -> None:
    """Mask every URL password in this process's `sys.argv` (after the command line was parsed: wandb records a
    run's command line in its metadata, and other libraries log it)."""
    import sys

    sys.argv[:] = [redact(a) for a in sys.argv]


def scheme_of(value: object) -> str | None:
    """The scheme of a URL (`postgresql+psycopg`, `s3`, ...), None for anything else (a path)."""
    m = _SCHEME.match(value) if isinstance(value, str) else None
    return m.group(1).lower() if m else None


def is_url(value: object) -> bool:
    return isinstance(value, StoreURL) or scheme_of(value) is not None


class StoreURL:
    """A lineage store's database URL; its password shows only through `secret()` (see the module)."""

    __slots__ = ("_url",)

    def __init__(self, url: str):
        self._url = url

    def secret(self) -> str:
        """The full URL, password included: for the engine only."""
        return self._url

    def _parsed(self):
        from sqlalchemy.engine import make_url

        return make_url(self._url)

    def masked(self) -> str:
        """The URL with its password as `***` (what messages, logs and displays show)."""
        return self._parsed().render_as_string(hide_password=True)

    def without_password(self) -> str:
        """The URL with no password at all (what is recorded, and what a command shown to the operator takes: libpq
        finds the password in PGPASSWORD or ~/.pgpass)."""
        return self._parsed()._replace(password=None).render_as_string(hide_password=False)

    @property
    def has_password(self) -> bool:
        return self._parsed().password is not None

    def __str__(self) -> str:
        return self.masked()

    def __format__(self, spec: str) -> str:
        return format(self.masked(), spec)

    def __repr__(self) -> str:
        return f"StoreURL({self.masked()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreURL) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __reduce__(self):  # pickled for a process of this machine (a Dask worker): the password travels with it
        return (StoreURL, (self._url,))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(cls)


def one_line_url(value: str) -> str:
    """How a given location is quoted in a message: its first line, any password masked."""
    return redact(value.splitlines()[0] if value else value)


def store_location(value: object, field: str = "store") -> Path | StoreURL:
    """A store location given as text, a Path or a StoreURL, checked (see the module); LocationError naming
    `field` otherwise."""
    if isinstance(value, (Path, StoreURL)):
        return value
    if not isinstance(value, str):
        raise LocationError(f"{field}: a path or a postgresql+psycopg:// URL, not {type(value).__name__}")
    scheme = scheme_of(value)
    if scheme is None:
        if not value.strip():
            raise LocationError(f"{field}: an empty location")
        return Path(value)
    if scheme not in STORE_SCHEMES:
        raise LocationError(f"{field}: {one_line_url(value)} is not a lineage store location (scheme {scheme}://): "
                            "give a path (an SQLite file) or postgresql+psycopg://user@host:port/database")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise LocationError(f"{field}: {one_line_url(value)} is not a valid database URL") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if not url.database or not url.host and not url.query.get("host"):
        raise LocationError(f"{field}: {url.render_as_string(hide_password=True)} names no host or no database: "
                            "postgresql+psycopg://user@host:port/database")
    return StoreURL(url.render_as_string(hide_password=False))


def path_only(value: object, field: str) -> object:
    """`value` unless it is a URL: a field that takes a folder or file refuses one (LocationError naming
    `field`), instead of taking `scheme:/...` as a relative folder."""
    if is_url(value):
        raise LocationError(f"{field}: {one_line_url(str(value))} is a URL, and {field} is a path here")
    return value


def masked(location: object) -> str:
    """How a store location is shown: a path as it is, a URL with its password masked."""
    if isinstance(location, StoreURL):
        return location.masked()
    return redact(str(location))


def _serialize(value: Path | StoreURL) -> str:
    return value.without_password() if isinstance(value, StoreURL) else str(value)


def _validate(value: object, info: ValidationInfo) -> Path | StoreURL:
    return store_location(value, info.field_name or "store")


# The pydantic type of a field that names a lineage store (`LineageSettings.store`, a pipeline config's
# `lineage_db`): a Path or a StoreURL, checked at the door, in JSON without the password (a string in the schema).
StoreLocationField = Annotated[
    Path | StoreURL, PlainValidator(_validate), PlainSerializer(_serialize, when_used="json"),
    WithJsonSchema({"type": "string", "format": "path-or-url"})]

StoreLocation = Path | StoreURL
