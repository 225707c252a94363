"""Where a flow's lineage goes: `LineageSettings` (the store, the artifacts folder, the code on record) and its
`WandbSettings` (project, entity, mode, folder, how long W&B may take).

Built in code, loaded from the environment (`LineageSettings.from_env()`), or kept wherever the flow keeps its
parameters: both are frozen pydantic models, so a Prefect flow can take them as typed parameters and the UI shows
them as a form. Pure: imports neither wandb nor Prefect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_wandb.artifact_files import ArtifactsLocationField, cache_root, check_remote
from prefect_wandb.locations import StoreLocationField, StoreURL, path_only

if TYPE_CHECKING:
    from prefect_wandb.store import LineageStore

WandbMode = Literal["auto", "online", "offline", "disabled"]

# W&B's rules for a project name (wandb.sdk.artifacts._validators, not a public API: restated here), applied to
# the entity too, which is a segment of the same URLs and artifact paths: at most 128 characters, none of these.
WANDB_NAME_MAXLEN = 128
WANDB_NAME_FORBIDDEN = frozenset("/\\#?%:")

# The environment `LineageSettings.from_env` reads (W&B's own variables are wandb's: WANDB_PROJECT, WANDB_ENTITY,
# WANDB_MODE, WANDB_DIR are read by wandb and by `from_env` alike).
STORE_ENV, ARTIFACTS_ENV, CODE_ROOT_ENV = "PREFECT_WANDB_STORE", "PREFECT_WANDB_ARTIFACTS", "PREFECT_WANDB_CODE_ROOT"


class ConfinementError(ValueError):
    """A path outside the operator's allowed roots; names the path, where it resolves to, and the roots."""


def allowed_roots(env: str) -> list[Path] | None:
    """The operator's allowed roots: the folders (os.pathsep-separated) in the environment variable `env`."""
    raw = os.environ.get(env, "")
    roots = [Path(r).expanduser().resolve() for r in raw.split(os.pathsep) if r.strip()]
    return roots or None


def confine(name: str, path: Path, roots: list[Path] | None, why: str) -> None:
    """Refuse `path` (after '..' and symlinks) outside every root of `roots` (nothing is refused when None); `name`
    is what the error calls it, `why` where the roots come from."""
    if roots is None:
        return
    real = Path(path).expanduser().resolve()
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise ConfinementError(f"{name}: {str(path)!r} resolves to {str(real)!r}, outside the allowed roots "
                               f"{[str(r) for r in roots]} ({why})")


def check_wandb_name(kind: str, name: str) -> str:
    """`name` if W&B would accept it as a project or entity name, else ValueError saying why (one line)."""
    if not name:
        raise ValueError(f"a W&B {kind} name cannot be empty")
    if len(name) > WANDB_NAME_MAXLEN:
        raise ValueError(f"a W&B {kind} name is at most {WANDB_NAME_MAXLEN} characters, this one {len(name)}")
    bad = sorted(WANDB_NAME_FORBIDDEN.intersection(name))
    if bad:
        raise ValueError(f"a W&B {kind} name cannot contain {' '.join(bad)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"a W&B {kind} name cannot contain control characters (newlines, tabs...)")
    if name.strip(".") == "":  # '.' and '..' would name a path, not a project, in W&B's URLs
        raise ValueError(f"a W&B {kind} name cannot be only dots")
    return name


class _Frozen(BaseModel):
    # Unknown keys are a typo in a payload or settings file: rejected, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class WandbSettings(_Frozen):
    """Where and how the stages' W&B runs are recorded. W&B is an observer: when it is unreachable, a stage records
    offline (its records wait in the store's gaps and the run folder for `sync`) and never fails for it."""

    project: str = Field("prefect-wandb", min_length=1, max_length=WANDB_NAME_MAXLEN,
                         description="W&B project (at most 128 characters, none of / \\ # ? % :).")
    entity: str | None = Field(None, max_length=WANDB_NAME_MAXLEN,
                               description="W&B entity (user or team; W&B's name rules, as for the project); "
                               "None uses your default.")
    mode: WandbMode = Field(
        "auto", description="'auto' is online exactly when wandb.init() would be: wandb's mode is online and "
        "an API key is configured for wandb's host (WANDB_API_KEY, netrc from `wandb login`, a settings file)."
    )
    dir: Path | None = Field(None, description="wandb's run folder; default $WANDB_DIR, else beside the lineage store.")
    init_timeout: float = Field(
        60, gt=0, le=600,
        description="Seconds an online wandb.init may take before the stage records offline instead.",
    )
    http_timeout: float = Field(
        20, gt=0, le=600, description="Seconds one W&B API request may take (wandb-core's GraphQL and uploads).")
    http_retries: int = Field(3, ge=0, le=50, description="Retries of one failing W&B API request.")
    artifact_wait_timeout: float = Field(
        120, gt=0, le=3600, description="Seconds a stage waits for W&B to commit each artifact it logged, so the "
        "next stage can use it; on timeout the artifact is left to `sync`.")
    finish_timeout: float = Field(
        120, gt=0, le=3600, description="Seconds run.finish() may spend uploading; the rest stays on disk.")

    @field_validator("dir", mode="before")
    @classmethod
    def _a_path(cls, v: object, info) -> object:
        return path_only(v, f"wandb.{info.field_name}")

    @field_validator("project", "entity")
    @classmethod
    def _wandb_name(cls, v: str | None, info) -> str | None:
        return v if v is None else check_wandb_name(info.field_name, v)


class LineageSettings(_Frozen):
    """Where a flow's lineage goes and what is recorded of the code that made it.

    `store`: the lineage store: the path of an SQLite file, or a PostgreSQL URL
    (`postgresql+psycopg://user@host:port/db`, shared by every worker; the password best from libpq's PGPASSWORD or
    ~/.pgpass, since a URL's password is kept in memory only: it is masked wherever the URL is shown, and dropped
    where the settings are serialised, a Prefect block or parameter included); `artifacts`: the folder artifact versions are stored under
    (content-addressed: `<type>/<name>/<digest>`), or an `s3://bucket/prefix` URL they are uploaded to from a local
    cache (`artifact_files`; keys from the AWS variables, never in the URL); `wandb`: the W&B side; `code_root`: a folder of the repository
    whose commit and dirty flag each run records (default: the working directory); `packages`: the distributions
    whose versions each run records (default: those the process has imported)."""

    # a refused value is not echoed in the error (a store URL's password would be)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True, hide_input_in_errors=True)

    store: StoreLocationField = Field(Path("lineage/lineage.db"), description="The lineage store: an SQLite file, or "
                                      "a postgresql+psycopg://user@host:port/db URL (password from PGPASSWORD).")
    artifacts: ArtifactsLocationField = Field(
        Path("lineage/artifacts"), description="Where artifact versions are stored: a folder, or s3://bucket/prefix "
        "(credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).")
    wandb: WandbSettings = Field(default_factory=WandbSettings)
    code_root: Path | None = Field(None, description="A folder of the git repository whose state each run records; "
                                   "default the working directory.")
    packages: tuple[str, ...] | None = Field(None, description="Distributions whose versions each run records; "
                                             "default every distribution the process has imported.")
    command: str = Field("prefect-wandb", description="The operator command the messages name (`<command> sync` "
                         "uploads what W&B is missing): `prefect-wandb`, or a pipeline's own CLI.")

    @field_validator("code_root", mode="before")
    @classmethod
    def _a_path(cls, v: object, info) -> object:
        return path_only(v, info.field_name)

    def resolved(self) -> LineageSettings:
        """The same settings with every path absolute, so stages agree whatever their working directory."""
        def real(p: Path | None) -> Path | None:
            return p.expanduser().resolve() if p is not None else None

        store = self.store if isinstance(self.store, StoreURL) else real(self.store)
        artifacts = real(self.artifacts) if isinstance(self.artifacts, Path) else self.artifacts
        return self.model_copy(update={
            "store": store, "artifacts": artifacts, "code_root": real(self.code_root),
            "wandb": self.wandb.model_copy(update={"dir": real(self.wandb.dir)})})

    def open_store(self, readonly: bool = False) -> LineageStore:
        """The lineage store of these settings (a path made absolute first)."""
        from prefect_wandb.store import LineageStore

        store = self.store if isinstance(self.store, StoreURL) else self.store.expanduser().resolve()
        return LineageStore(store, readonly=readonly)

    def local_artifacts(self) -> Path:
        """The local folder stages stage and finalize into: the artifacts folder, or for an S3 location its cache
        on this host (`artifact_files.cache_root`)."""
        return self.artifacts if isinstance(self.artifacts, Path) else cache_root(self.artifacts)

    def remote_artifacts(self) -> str | None:
        """The S3 location versions are uploaded to, None for a local artifacts folder."""
        return None if isinstance(self.artifacts, Path) else self.artifacts

    def check_artifacts(self) -> None:
        """The preflight of an S3 artifacts location (its bucket exists and answers): RemoteArtifactsError in one
        line before any work starts; nothing to check for a folder (its writability is checked where it is made)."""
        if not isinstance(self.artifacts, Path):
            check_remote(self.artifacts)

    def store_folder(self) -> Path:
        """The folder "beside the store": an SQLite store's folder; a store in a database has none, so the folder
        that holds the (local) artifacts folder (for the default layout, `lineage/`, the same folder either way)."""
        return self.local_artifacts().parent if isinstance(self.store, StoreURL) else self.store.parent

    def wandb_folder(self) -> Path:
        """Where wandb writes its run folders: `wandb.dir`, else $WANDB_DIR, else beside the store (`store_folder`:
        for a store in a database, beside the artifacts folder)."""
        if self.wandb.dir:
            return self.wandb.dir
        return Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else self.store_folder()

    def for_workers(self) -> LineageSettings:
        """These settings with what a stage on another process would decide from its own environment decided here:
        the W&B folder (this process's $WANDB_DIR, else beside the store) and the W&B mode ('auto': whether this
        process has an API key). For stages on Dask workers (a sweep's trials)."""
        from prefect_wandb.wandb.credentials import resolve_mode

        folder = self.wandb_folder().expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return self.model_copy(update={"wandb": self.wandb.model_copy(
            update={"dir": folder, "mode": resolve_mode(self.wandb.mode)})})

    @classmethod
    def from_env(cls, **overrides) -> LineageSettings:
        """Settings from the environment: $PREFECT_WANDB_STORE, $PREFECT_WANDB_ARTIFACTS, $PREFECT_WANDB_CODE_ROOT,
        and W&B's own $WANDB_PROJECT, $WANDB_ENTITY, $WANDB_MODE and $WANDB_DIR; `overrides` win."""
        env = os.environ
        wb = {k: env[v] for k, v in (("project", "WANDB_PROJECT"), ("entity", "WANDB_ENTITY"),
                                     ("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")) if env.get(v)}
        if "mode" in wb:  # wandb's older spellings of its modes
            wb["mode"] = {"dryrun": "offline", "run": "online"}.get(wb["mode"], wb["mode"])
        top = {k: env[v] for k, v in (("store", STORE_ENV), ("artifacts", ARTIFACTS_ENV),
                                      ("code_root", CODE_ROOT_ENV)) if env.get(v)}
        return cls.model_validate({**top, "wandb": wb, **overrides})
