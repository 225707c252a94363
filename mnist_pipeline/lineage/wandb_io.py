"""The W&B boundary: the only module of the project that imports wandb.

- which host and key W&B would use, and the stage's mode (`resolve_mode`);
- `start_run`: one stage's W&B run (`StageRun`), online when asked and reachable, else offline with a warning;
  `StageRun` is everything a stage asks of W&B (inputs, outputs, logs, `wandb.watch`, aliases, finish);
- `offline_records`: the records of an offline run's `.wandb` file (what `wandb sync` uploads);
- `WandbClient`: the real W&B for `mnist-pipeline sync` and `audit --online`, implementing the `WandbBackend`
  Protocol of `sync.py` (`recording.RecordingWandb` implements it too, in memory).
"""

from __future__ import annotations

import logging
import netrc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import wandb

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import digest_alias, wandb_path, wandb_ref
from mnist_pipeline.lineage.store import NewArtifact

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- host, key, mode


def base_url() -> str:
    """The W&B host wandb would talk to (`WANDB_BASE_URL`, else wandb's own default)."""
    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def has_api_key(base: str | None = None) -> bool:
    """Whether an API key for `base` (default: `base_url()`) is configured."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(base or base_url()).hostname) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str) -> str:
    if requested == "auto":
        return "online" if has_api_key() else "offline"
    return requested


def wandb_dir(cfg: PipelineConfig) -> Path:
    d = cfg.wandb.dir or (Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else cfg.lineage_db.parent)
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------------------------- one stage's run


class StageRun:
    """One stage's W&B run: what the stage lifecycle (`stage.py`) asks of W&B, and nothing else."""

    def __init__(self, cfg: PipelineConfig, run: wandb.Run, mode: str, run_id: str):
        self.cfg, self.run, self.mode, self.run_id = cfg, run, mode, run_id
        self._watched = None

    @property
    def online(self) -> bool:
        return self.mode == "online"

    @property
    def url(self) -> str | None:
        return self.run.url if self.online else None

    @property
    def run_dir(self) -> str:
        return str(Path(self.run.dir).parent)

    def _path(self, name: str, digest: str) -> str:
        return wandb_ref(self.cfg.wandb.entity, self.cfg.wandb.project, name, digest)

    def use_artifact(self, name: str, digest: str) -> None:
        """Online: declare the exact version (`name:sha256-…`) as an input. Offline wandb refuses use_artifact:
        the lineage store keeps the edge for `mnist-pipeline sync`."""
        if self.online:
            self.run.use_artifact(self._path(name, digest))

    def set_aliases(self, name: str, digest: str, aliases: list[str], registry_path: str | None = None) -> bool:
        """Online: add `aliases` to the exact W&B version (W&B moves an alias off the version that held it) and
        link it into `registry_path`. Offline: nothing, and False (the store keeps the decision for `sync`)."""
        if not self.online:
            return False
        art = self.run.use_artifact(self._path(name, digest))
        art.aliases = sorted(set(art.aliases) | set(aliases))
        art.save()
        if registry_path:
            self.run.link_artifact(art, registry_path)
        return True

    def log(self, data: dict, step: int | None = None) -> None:
        self.run.log(data, step=step)

    def watch(self, model, criterion=None, log_freq: int = 10) -> None:
        """wandb.watch(log="all") on this run.

        wandb's torch hooks write to the process-global `wandb.run` (reinit="create_new" never sets it), so
        this run is made the global one while the stage lasts. If another live run already holds it (a second
        training in the same process), watching is skipped with a warning rather than mixing the two runs.
        """
        holder = wandb.run
        if holder is not None and holder is not self.run and not getattr(holder, "_is_finished", False):
            log.warning("wandb.watch skipped: run %s already holds the global wandb.run", holder.id)
            return
        wandb.run = self.run
        self._watched = model
        self.run.watch(model, criterion, log="all", log_freq=log_freq)

    def unwatch(self) -> None:
        if self._watched is not None:
            self.run.unwatch(self._watched)
            self._watched = None
        if wandb.run is self.run:
            wandb.run = None

    def log_confusion_matrix(self, key: str, y_true: Sequence[int], preds: Sequence[int],
                             class_names: Sequence[str]) -> None:
        self.run.log({key: wandb.plot.confusion_matrix(y_true=list(y_true), preds=list(preds),
                                                       class_names=list(class_names))})

    def log_image_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence],
                        image_column: str) -> None:
        """A W&B Table whose `image_column` holds uint8 arrays, logged as images."""
        i = list(columns).index(image_column)
        table = wandb.Table(columns=list(columns))
        for row in rows:
            row = list(row)
            row[i] = wandb.Image(np.asarray(row[i]))
            table.add_data(*row)
        self.run.log({key: table})

    def log_artifacts(self, arts: Sequence[NewArtifact], summary: dict) -> None:
        """Each output as a W&B Artifact (aliases `latest` and `sha256-<digest16>`), then the run's summary."""
        for a in arts:
            art = wandb.Artifact(a.name, type=a.type, metadata=a.metadata)
            art.add_dir(a.path)
            self.run.log_artifact(art, aliases=["latest", digest_alias(a.digest)])
        if summary:
            self.run.summary.update(summary)

    def finish(self, failed: bool = False) -> None:
        self.unwatch()
        self.run.finish(exit_code=1 if failed else 0)


# --------------------------------------------------------------------------------------------- init and offline fallback


# W&B host -> (monotonic time of the last failed online init, its reason). After one failure, the next stages of
# this process record offline straight away for ONLINE_RETRY_AFTER_S, instead of each waiting out init_timeout.
_online_failures: dict[str, tuple[float, str]] = {}
ONLINE_RETRY_AFTER_S = 600.0


def _fall_back_offline(job_type: str, reason: str) -> None:
    msg = f"W&B online init failed ({reason}); recording {job_type} offline for a later `wandb sync`"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def start_run(cfg: PipelineConfig, job_type: str, run_id: str, group: str | None, mode: str,
              config: dict) -> StageRun:
    """The stage's W&B run: online if asked and reachable, else offline under a fresh id (wandb keeps the
    failed online attempt's id "in use" for the life of the process)."""
    def kwargs(run_id: str) -> dict:
        return dict(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(wandb_dir(cfg)), id=run_id,
                    name=f"{job_type}-{run_id[:8]}", group=group, job_type=job_type, config=config,
                    reinit="create_new")
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=cfg.wandb.init_timeout)
    if mode == "online":
        failed = _online_failures.get(base_url())
        if failed is not None and time.monotonic() - failed[0] < ONLINE_RETRY_AFTER_S:
            _fall_back_offline(job_type, f"{time.monotonic() - failed[0]:.0f} s ago in this process: {failed[1]}")
            mode = "offline"
        else:
            try:
                run = wandb.init(mode="online", settings=settings, **kwargs(run_id))
                _online_failures.pop(base_url(), None)
                return StageRun(cfg, run, "online", run_id)
            except Exception as e:  # unreachable host, bad key: keep every record offline for a later `sync`
                reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
                if os.environ.get("WANDB_API_KEY"):  # an error that echoes the key must not put it in the logs
                    reason = reason.replace(os.environ["WANDB_API_KEY"], "<WANDB_API_KEY>")
                _online_failures[base_url()] = (time.monotonic(), reason)
                _fall_back_offline(job_type, reason)
                # The aborted online attempt left a folder under the same run id; `wandb sync --sync-all` must
                # find only the offline run that holds the records.
                for d in (wandb_dir(cfg) / "wandb").glob(f"run-*-{run_id}"):
                    shutil.rmtree(d, ignore_errors=True)
                mode, run_id = "offline", uuid.uuid4().hex[:12]
    return StageRun(cfg, wandb.init(mode=mode, settings=settings, **kwargs(run_id)), mode, run_id)


# --------------------------------------------------------------------------------------------- offline runs


def offline_records(run_file: Path) -> Iterator:
    """The records of an offline run's `run-<id>.wandb` file, as wandb's protobuf `Record`s.

    The file is wandb's transaction log (what `wandb sync` uploads): a 7-byte header, then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    block, header = 32768, 7
    data = Path(run_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file}: not a wandb run file")
    pos, pending = header, b""
    while pos + header <= len(data):
        room = block - pos % block
        if room < header:  # block trailer padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            break
        chunk = data[pos + header : pos + header + length]
        pos += header + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec


# --------------------------------------------------------------------------------------------- the real W&B for sync and audit --online


class WandbUnavailable(RuntimeError):
    """No usable W&B: no API key, the host unreachable, or the key refused. Raised before anything is changed."""


def _not_found(e: Exception) -> bool:
    text = str(e).lower()
    return (isinstance(e, ValueError) or "notfound" in type(e).__name__.lower() or "not found" in text
            or "404" in text or "does not exist" in text)


def offline_run_file(run_dir: Path) -> Path | None:
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    return files[0] if files else None


def synced_marker(run_dir: Path) -> Path | None:
    """`wandb sync` leaves `run-<id>.wandb.synced` beside a run file it has uploaded."""
    f = offline_run_file(run_dir)
    return f.with_name(f.name + ".synced") if f else None


class WandbClient:
    """The real W&B: its public API (`wandb.Api`), the `wandb sync` command, and a resumed run for `use_artifact`."""

    def __init__(self, timeout: int = 30, connect_timeout: float = 5.0):
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._api = None
        self._entity: str | None = None

    def check(self) -> str:
        """One cheap TCP connect and one authenticated query; returns the entity to use when a run names none."""
        if self._entity:
            return self._entity
        base = base_url()
        if not has_api_key(base):
            raise WandbUnavailable(f"no W&B API key for {base}: set WANDB_API_KEY or run `wandb login`")
        u = urlparse(base)
        if not u.hostname:
            raise WandbUnavailable(f"WANDB_BASE_URL {base!r} is not a URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            socket.create_connection((u.hostname, port), timeout=self.connect_timeout).close()
        except OSError as e:
            raise WandbUnavailable(f"W&B at {base} is unreachable ({e})") from None
        try:
            self._api = wandb.Api(timeout=self.timeout)
            viewer = self._api.viewer
            entity = self._api.default_entity or getattr(viewer, "entity", None) or viewer.username
        except Exception as e:
            raise WandbUnavailable(f"W&B at {base} refused the API key or failed ({type(e).__name__}: {e})") from None
        if not entity:
            raise WandbUnavailable(f"W&B at {base} names no default entity for this API key")
        self._entity = entity
        return entity

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
        env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
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
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=90)
        with tempfile.TemporaryDirectory(prefix="mnist-sync-") as d:
            run = wandb.init(id=run_id, project=project, entity=entity, resume="must", mode="online", dir=d,
                             reinit="create_new", settings=settings)
            try:
                for ref in refs:
                    run.use_artifact(ref)
            finally:
                run.finish()

    def add_aliases(self, ref: str, aliases: list[str]) -> list[str]:
        art = self.api.artifact(ref)
        missing = [a for a in aliases if a not in art.aliases]
        if missing:
            art.aliases.extend(missing)
            art.save()
        return missing

    def lookup_artifact(self, ref: str) -> dict | None:
        try:
            art = self.api.artifact(ref)
        except Exception as e:
            if _not_found(e):
                return None
            raise
        logged = art.logged_by()
        return {"ref": ref, "version": art.version, "aliases": list(art.aliases),
                "logged_by": logged.id if logged else None, "used_by": [r.id for r in art.used_by()],
                "files": {path: entry.digest for path, entry in art.manifest.entries.items()}}
