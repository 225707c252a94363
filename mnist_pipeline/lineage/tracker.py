"""The one module that talks to W&B, and the glue between W&B and the lineage store.

A pipeline stage is `with open_stage(cfg, "train", flow_run_id) as stage:` — one W&B run with that job_type,
grouped by the flow run, and one row in the lineage store. Inside, `stage.use(ref)` declares an input (checked
against its recorded sha256s), `stage.produce(...)` an output. On success the outputs are moved into place
(fsync, then rename), logged as W&B Artifacts and committed to the store with their edges in one transaction.
On failure nothing is produced, the run is recorded as failed, and the W&B run is finished with exit code 1.
"""

from __future__ import annotations

import importlib.metadata
import logging
import netrc
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import wandb

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import (ArtifactRef, DigestMismatch, fsync_tree, manifest, manifest_digest,
                                         verify_files)
from mnist_pipeline.lineage.store import ArtifactRecord, LineageStore, NewArtifact

log = logging.getLogger(__name__)

PACKAGES = ("mnist-lineage-pipeline", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript",
            "wandb", "prefect", "pydantic")
SOURCE_DIR = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- environment


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state() -> dict:
    """The git commit of the code that ran and whether its tree had uncommitted changes (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty, "source_dir": str(SOURCE_DIR)}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_environment(seed: int, flow_run_id: str | None) -> dict:
    return {**code_state(), "packages": package_versions(), "python": sys.version.split()[0],
            "platform": platform.platform(), "seed": seed, "flow_run_id": flow_run_id}


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def process_identity() -> dict:
    """Who runs a stage, kept in the store so a later run can tell that this one's process died."""
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": stat[1] if stat else None}


def process_gone(proc: dict) -> bool:
    """True only when sure: same host, and the pid is gone, a zombie, or now another process."""
    pid = proc.get("pid")
    if os.name != "posix" or not isinstance(pid, int) or proc.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, someone else's
    stat = _proc_stat(pid)
    if stat is None:
        return False
    return stat[0] == "Z" or (proc.get("start") is not None and stat[1] != proc["start"])


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
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


# --------------------------------------------------------------------------------------------- the stage


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(kind: str, value: str) -> str:
    """Artifact names and types become folder names under artifacts_dir: one plain path component only."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"artifact {kind} {value!r} is not a plain name ([A-Za-z0-9._-], no '/' or '..'): it "
                         "would not stay inside artifacts_dir")
    return value


def _inside(path: Path, root: Path, what: str) -> Path:
    real = Path(path).resolve()
    if not real.is_relative_to(Path(root).resolve()):
        raise ValueError(f"{what} {str(path)!r} resolves outside {str(root)!r}")
    return real


class Stage:
    def __init__(self, cfg: PipelineConfig, job_type: str, flow_run_id: str | None, store: LineageStore,
                 run: wandb.Run, run_id: str, mode: str):
        self.cfg, self.job_type, self.flow_run_id = cfg, job_type, flow_run_id
        self.store, self.run, self.run_id, self.mode = store, run, run_id, mode
        self.used: list[ArtifactRecord] = []
        self._pending: list[tuple[str, str, Path, dict]] = []
        self._staging_root = cfg.artifacts_dir / ".staging" / run_id
        self.summary: dict = {}
        self.outputs: dict[str, ArtifactRef] = {}  # artifact type -> committed ref, filled on success

    # inputs --------------------------------------------------------------------------------------------
    def use(self, ref: ArtifactRef) -> Path:
        """Declare `ref` as an input: it must be recorded, and its files must match their recorded sha256."""
        return Path(self.record(ref).path)

    def record(self, ref: ArtifactRef) -> ArtifactRecord:
        """`use`, returning the artifact's lineage record (its metadata, files and version)."""
        rec = self.store.find_artifact(ref.name, ref.digest)
        if rec is None:
            raise DigestMismatch(f"{ref.label} ({ref.digest[:16]}) is not in the lineage store {self.store.path}")
        self.used.append(rec)  # kept on record even when refused below: the failed run names what it refused
        verify_files(Path(rec.path), rec.files)
        if self.mode == "online":
            prefix = f"{self.cfg.wandb.entity}/" if self.cfg.wandb.entity else ""
            self.run.use_artifact(f"{prefix}{self.cfg.wandb.project}/{ref.name}:{ref.alias}")
        return rec

    def set_aliases(self, ref: ArtifactRef, aliases: list[str], registry_path: str | None = None) -> bool:
        """Online: add `aliases` to the exact W&B version of `ref` (W&B moves an alias off the version that held
        it) and link it into `registry_path`. Offline: nothing, and False: the lineage store keeps the decision
        for `mnist-pipeline sync`."""
        if self.mode != "online":
            return False
        prefix = f"{self.cfg.wandb.entity}/" if self.cfg.wandb.entity else ""
        art = self.run.use_artifact(f"{prefix}{self.cfg.wandb.project}/{ref.name}:{ref.alias}")
        art.aliases = sorted(set(art.aliases) | set(aliases))
        art.save()
        if registry_path:
            self.run.link_artifact(art, registry_path)
        return True

    # outputs -------------------------------------------------------------------------------------------
    def staging(self, name: str) -> Path:
        d = self._staging_root / _safe_name("name", name)
        d.mkdir(parents=True, exist_ok=False)
        return d

    def produce(self, name: str, type: str, directory: Path, metadata: dict | None = None) -> None:
        """Queue `directory` (from `staging`) as output `name`; it is moved into place only if the stage succeeds."""
        _safe_name("name", name), _safe_name("type", type)
        _inside(directory, self._staging_root, "output directory")  # only staged files are ever moved
        self._pending.append((name, type, Path(directory), dict(metadata or {})))

    # logging -------------------------------------------------------------------------------------------
    def log(self, data: dict, step: int | None = None) -> None:
        self.run.log(data, step=step)

    def watch(self, model, criterion=None, log_freq: int = 10) -> None:
        """wandb.watch(log="all") on this stage's run.

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

    def _unwatch(self) -> None:
        if getattr(self, "_watched", None) is not None:
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

    # lifecycle -----------------------------------------------------------------------------------------
    def _inputs_metadata(self) -> list[dict]:
        return [{"name": r.name, "type": r.type, "version": r.version, "digest": r.digest,
                 "files": {f.relpath: f.sha256 for f in r.files}} for r in self.used]

    def _finalize(self) -> list[NewArtifact]:
        out = []
        for name, type, staged, meta in self._pending:
            files = manifest(staged)
            if not files:
                raise ValueError(f"output {name!r} has no files")
            digest = manifest_digest(files)
            final = self.cfg.artifacts_dir / type / name / digest[:16]
            _inside(final, self.cfg.artifacts_dir, "artifact folder")
            fsync_tree(staged)
            if final.exists():  # identical content already stored: keep that copy, if it is still intact
                verify_files(final, files)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staged, final)  # never onto a non-empty folder: nothing stored is overwritten
                except OSError:
                    if not final.is_dir():
                        raise
                    verify_files(final, files)  # a concurrent run stored the same content a moment ago
            meta = {**meta, "inputs": self._inputs_metadata(), "files": {f.relpath: f.sha256 for f in files},
                    "producer": {"job_type": self.job_type, "run_id": self.run_id, "flow_run_id": self.flow_run_id}}
            out.append(NewArtifact(name=name, type=type, digest=digest, path=str(final), metadata=meta, files=files))
        return out

    def _log_wandb_artifacts(self, arts: list[NewArtifact]) -> None:
        for a in arts:
            art = wandb.Artifact(a.name, type=a.type, metadata=a.metadata)
            art.add_dir(a.path)
            self.run.log_artifact(art, aliases=["latest", f"sha256-{a.digest[:16]}"])

    def _commit(self) -> None:
        arts = self._finalize()
        self._log_wandb_artifacts(arts)
        if self.summary:
            self.run.summary.update(self.summary)
        records = self.store.finish_run(self.run_id, used=[r.artifact_id for r in self.used], produced=arts,
                                        summary=self.summary, wandb_url=self.url, wandb_mode=self.mode)
        for r in records:
            self.outputs[r.type] = ArtifactRef(name=r.name, type=r.type, version=r.version, digest=r.digest,
                                               path=r.path)

    @property
    def url(self) -> str | None:
        return self.run.url if self.mode == "online" else None

    @property
    def run_dir(self) -> str:
        return str(Path(self.run.dir).parent)


# W&B host -> (monotonic time of the last failed online init, its reason). After one failure, the next stages of
# this process record offline straight away for ONLINE_RETRY_AFTER_S, instead of each waiting out init_timeout.
_online_failures: dict[str, tuple[float, str]] = {}
ONLINE_RETRY_AFTER_S = 600.0


def _wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def _fall_back_offline(job_type: str, reason: str) -> None:
    msg = f"W&B online init failed ({reason}); recording {job_type} offline for a later `wandb sync`"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _init_run(cfg: PipelineConfig, job_type: str, run_id: str, group: str | None, mode: str,
              config: dict) -> tuple[wandb.Run, str, str]:
    """(run, mode, run id): online if asked and reachable, else offline under a fresh id (wandb keeps the
    failed online attempt's id "in use" for the life of the process)."""
    def kwargs(run_id: str) -> dict:
        return dict(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(wandb_dir(cfg)), id=run_id,
                    name=f"{job_type}-{run_id[:8]}", group=group, job_type=job_type, config=config,
                    reinit="create_new")
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=cfg.wandb.init_timeout)
    if mode == "online":
        failed = _online_failures.get(_wandb_host())
        if failed is not None and time.monotonic() - failed[0] < ONLINE_RETRY_AFTER_S:
            _fall_back_offline(job_type, f"{time.monotonic() - failed[0]:.0f} s ago in this process: {failed[1]}")
            mode = "offline"
        else:
            try:
                run = wandb.init(mode="online", settings=settings, **kwargs(run_id))
                _online_failures.pop(_wandb_host(), None)
                return run, "online", run_id
            except Exception as e:  # unreachable host, bad key: keep every record offline for a later `sync`
                reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
                if os.environ.get("WANDB_API_KEY"):  # an error that echoes the key must not put it in the logs
                    reason = reason.replace(os.environ["WANDB_API_KEY"], "<WANDB_API_KEY>")
                _online_failures[_wandb_host()] = (time.monotonic(), reason)
                _fall_back_offline(job_type, reason)
                # The aborted online attempt left a folder under the same run id; `wandb sync --sync-all` must
                # find only the offline run that holds the records.
                for d in (wandb_dir(cfg) / "wandb").glob(f"run-*-{run_id}"):
                    shutil.rmtree(d, ignore_errors=True)
                mode, run_id = "offline", uuid.uuid4().hex[:12]
    return wandb.init(mode=mode, settings=settings, **kwargs(run_id)), mode, run_id


@contextmanager
def open_stage(cfg: PipelineConfig, job_type: str, flow_run_id: str | None = None) -> Iterator[Stage]:
    """One pipeline stage: a W&B run of `job_type` and its lineage record, committed only on success."""
    store = LineageStore(cfg.lineage_db)
    for dead in store.fail_dead_runs(process_gone):  # runs of killed processes: failed, staging removed
        log.warning("run %s was left 'running' by a process that died; recorded as failed", dead)
        shutil.rmtree(cfg.artifacts_dir / ".staging" / dead, ignore_errors=True)
    run_id = uuid.uuid4().hex[:12]
    group = f"flow-{flow_run_id}" if flow_run_id else None
    env = run_environment(cfg.train.seed, flow_run_id)
    config = {**cfg.flat(), "lineage": env}
    run, mode, run_id = _init_run(cfg, job_type, run_id, group, resolve_mode(cfg.wandb.mode), config)
    store.start_run(run_id, job_type, config=cfg.model_dump(mode="json"), env={**env, "process": process_identity()},
                    flow_run_id=flow_run_id,
                    run_group=group, wandb_mode=mode, wandb_dir=str(Path(run.dir).parent), wandb_project=cfg.wandb.project,
                    wandb_entity=cfg.wandb.entity)
    stage = Stage(cfg, job_type, flow_run_id, store, run, run_id, mode)
    try:
        yield stage
        stage._commit()
    except BaseException as e:
        store.fail_run(run_id, used=[r.artifact_id for r in stage.used], error=f"{type(e).__name__}: {e}")
        stage._unwatch()
        run.finish(exit_code=1)
        raise
    else:
        stage._unwatch()
        run.finish()
    finally:
        shutil.rmtree(stage._staging_root, ignore_errors=True)


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


# --------------------------------------------------------------------------------------------- W&B sync and lookups
#
# `mnist-pipeline sync` uploads offline runs (`wandb sync`), then completes W&B's lineage graph with the input
# edges offline mode could not record (resume each run, `use_artifact` on the exact `sha256-` versions) and applies
# recorded promotions as aliases. `audit --online` looks each artifact up in W&B. Every W&B call goes through one
# small interface: `WandbClient` talks to W&B; `sync.RecordingWandb` records the calls in order and answers from
# an in-memory model of the server (`sync --dry-run` and the tests use it). What has been done is kept in the lineage
# store (`sync_log`, `promotions.wandb_applied_at`), so a second sync sends nothing: re-running `wandb sync` on an
# uploaded run would duplicate its artifact versions (wandb issue #3962).


class WandbUnavailable(RuntimeError):
    """No usable W&B: no API key, the host unreachable, or the key refused. Raised before anything is changed."""


def wandb_ref(entity: str | None, project: str, name: str, digest: str) -> str:
    """The W&B path of one exact artifact version: `[entity/]project/name:sha256-<digest[:16]>`."""
    return f"{entity + '/' if entity else ''}{project}/{name}:sha256-{digest[:16]}"


def _run_path(entity: str | None, project: str, run_id: str) -> str:
    return f"{entity + '/' if entity else ''}{project}/{run_id}"


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

    @staticmethod
    def base_url() -> str:
        return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url

    def _has_key(self, base: str) -> bool:
        if os.environ.get("WANDB_API_KEY"):
            return True
        try:
            if netrc.netrc().authenticators(urlparse(base).hostname) is not None:
                return True
        except (OSError, netrc.NetrcParseError):
            pass
        return has_api_key()

    def check(self) -> str:
        """One cheap TCP connect and one authenticated query; returns the entity to use when a run names none."""
        if self._entity:
            return self._entity
        base = self.base_url()
        if not self._has_key(base):
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
            self.api.run(_run_path(entity, project, run_id))
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
            return self.api.run(_run_path(entity, project, run_id)).url
        except Exception:
            return None

    def run_inputs(self, entity: str | None, project: str, run_id: str) -> set[str]:
        """The inputs W&B already holds for a run, as `name:vN` and `name:<alias>` strings."""
        out: set[str] = set()
        for art in self.api.run(_run_path(entity, project, run_id)).used_artifacts():
            collection = art.name.split(":")[0]
            out.add(art.name)
            out.update(f"{collection}:{a}" for a in art.aliases)
        return out

    def declare_inputs(self, entity: str | None, project: str, run_id: str, refs: list[str]) -> None:
        """Resume the (uploaded) run and declare each input on its exact version."""
        import tempfile

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
