"""`WandbClient`: the real W&B for `sync` and `audit --online` (the `WandbBackend` of `sync.py`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import wandb

from prefect_wandb.records import WandbVersion
from prefect_wandb.refs import digest_alias, wandb_path
from prefect_wandb.wandb.credentials import WandbCredentials, masked_line, resolve_credentials
from prefect_wandb.wandb.run_file import synced_marker
from prefect_wandb.wandb.settings import QUIET, WandbTimeouts, run_settings


class WandbUnavailable(RuntimeError):
    """No usable W&B: no API key, the host unreachable, or the key refused. Raised before anything is changed."""


def wandb_error_line(e: BaseException) -> str:
    """One line for any error out of W&B (ours, wandb's, the network's), with the API key masked."""
    if isinstance(e, WandbUnavailable):
        return str(e)
    return f"W&B failed: {masked_line(e)}"


def _not_found(e: Exception) -> bool:
    """Whether wandb's error says the run or version does not exist, rather than that W&B failed to answer: wandb
    raises a ValueError for what its answer lacks (`RunNotFoundError` is one; `Api.artifact` wraps it in a
    CommError, as it wraps an HTTP error), and an HTTP 404 is a CommError around the response."""
    cause = e.exc if isinstance(e, wandb.errors.CommError) else e
    if isinstance(cause, ValueError):
        return True
    response = getattr(cause, "response", None)
    return getattr(response, "status_code", None) == 404


class WandbClient:
    """The real W&B: its public API (`wandb.Api`), the `wandb sync` command, and a resumed run for `use_artifact`
    and `log_artifact`. Host and key are `resolve_credentials()`'s, handed to wandb explicitly."""

    def __init__(self, timeout: int = 30, connect_timeout: float = 5.0, timeouts: WandbTimeouts | None = None):
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.timeouts = timeouts or WandbTimeouts(http=float(timeout))
        self.creds: WandbCredentials | None = None
        self._api: wandb.Api | None = None
        self._entity: str | None = None

    def check(self) -> str:
        """One cheap TCP connect and one authenticated query; returns the entity to use when a run names none."""
        if self._entity:
            return self._entity
        self.creds = creds = resolve_credentials()
        base = creds.host
        if not creds.has_key:
            raise WandbUnavailable(f"{creds.problem} (host: {creds.host_source})")
        u = urlparse(base)
        if not u.hostname:
            raise WandbUnavailable(f"W&B host {base!r} ({creds.host_source}) is not a URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            socket.create_connection((u.hostname, port), timeout=self.connect_timeout).close()
        except OSError as e:
            raise WandbUnavailable(f"W&B at {base} is unreachable ({e})") from None
        try:
            run_settings(creds, self.timeouts)  # bounds wandb's process-wide retries, which wandb.Api uses
            self._api = wandb.Api(overrides={"base_url": base}, api_key=creds.api_key, timeout=self.timeout)
            viewer = self._api.viewer
            entity = self._api.default_entity or getattr(viewer, "entity", None) or viewer.username
        except Exception as e:
            raise WandbUnavailable(f"W&B at {base} refused the API key or failed ({masked_line(e, creds.api_key)}; "
                                   f"key from {creds.key_source})") from None
        if not entity:
            raise WandbUnavailable(f"W&B at {base} names no default entity for this API key")
        self._entity = entity
        return entity

    def _resumed(self, entity: str | None, project: str, run_id: str, d: str):
        self.check()
        settings = run_settings(self.creds, self.timeouts, **QUIET)
        return wandb.init(id=run_id, project=project, entity=entity, resume="must", mode="online", dir=d,
                          reinit="create_new", settings=settings)

    @property
    def api(self):
        if self._api is None:
            self.check()
        return self._api

    def run_exists(self, entity: str | None, project: str, run_id: str) -> bool:
        try:
            self.api.run(wandb_path(entity, project, run_id))
            return True
        except Exception as e:
            if _not_found(e):
                return False
            raise

    def upload(self, run_dir: Path, entity: str | None, project: str, run_id: str) -> str | None:
        """`wandb sync` of one offline run folder; succeeds only if wandb marked the run file as synced."""
        cmd = [sys.executable, "-m", "wandb", "sync", "-p", project, *(["-e", entity] if entity else []), str(run_dir)]
        self.check()
        assert self.creds is not None
        env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
        env["WANDB_BASE_URL"] = self.creds.host  # where we checked, whatever the settings files say
        if self.creds.api_key:
            env["WANDB_API_KEY"] = self.creds.api_key
        # in a folder of its own: wandb leaves a `./wandb/` debug folder in the directory it runs in
        with tempfile.TemporaryDirectory(prefix="prefect-wandb-sync-") as cwd:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=cwd)
        marker = synced_marker(run_dir)
        if out.returncode != 0 or marker is None or not marker.exists():
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`wandb sync {run_dir}` failed (exit {out.returncode}): {' / '.join(tail)}")
        try:
            return self.api.run(wandb_path(entity, project, run_id)).url
        except Exception:
            return None

    def run_inputs(self, entity: str | None, project: str, run_id: str) -> set[str]:
        """The inputs W&B already holds for a run, as `name:vN` and `name:<alias>` strings."""
        out: set[str] = set()
        for art in self.api.run(wandb_path(entity, project, run_id)).used_artifacts():
            collection = art.name.split(":")[0]
            out.add(art.name)
            out.update(f"{collection}:{a}" for a in art.aliases)
        return out

    def declare_inputs(self, entity: str | None, project: str, run_id: str, refs: list[str]) -> None:
        """Resume the (uploaded) run and declare each input on its exact version."""
        with tempfile.TemporaryDirectory(prefix="prefect-wandb-sync-") as d:
            run = self._resumed(entity, project, run_id, d)
            try:
                for ref in refs:
                    run.use_artifact(ref)
            finally:
                run.finish()

    def log_artifact(self, entity: str | None, project: str, run_id: str, *, name: str, type: str, path: str,
                     metadata: dict, digest: str) -> None:
        """Resume the run that produced an artifact and log it (aliases `latest`, `sha256-…`), waiting for W&B to
        commit it: for an online run whose own upload failed."""
        with tempfile.TemporaryDirectory(prefix="prefect-wandb-sync-") as d:
            run = self._resumed(entity, project, run_id, d)
            try:
                art = wandb.Artifact(name, type=type, metadata=metadata)
                art.add_dir(path)
                run.log_artifact(art, aliases=["latest", digest_alias(digest)]).wait(
                    timeout=self.timeouts.artifact_wait)
            finally:
                run.finish()

    def add_aliases(self, ref: str, aliases: list[str]) -> list[str]:
        art = self.api.artifact(ref)
        missing = [a for a in aliases if a not in art.aliases]
        if missing:
            art.aliases.extend(missing)
            art.save()
        return missing

    def link_artifact(self, ref: str, registry_path: str, aliases: list[str]) -> None:
        """Link the version into a registry collection (`wandb-registry-model/<name>`), carrying `aliases`."""
        self.api.artifact(ref).link(registry_path, aliases=list(aliases))

    def lookup_artifact(self, ref: str) -> WandbVersion | None:
        try:
            art = self.api.artifact(ref)
        except Exception as e:
            if _not_found(e):
                return None
            raise
        logged = art.logged_by()
        return WandbVersion(ref=ref, version=art.version, aliases=list(art.aliases),
                            logged_by=logged.id if logged else None, used_by=[r.id for r in art.used_by()],
                            files={path: entry.digest for path, entry in art.manifest.entries.items()})
