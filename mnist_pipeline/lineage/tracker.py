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
import shutil
import subprocess
import sys
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
        rec = self.store.find_artifact(ref.name, ref.digest)
        if rec is None:
            raise DigestMismatch(f"{ref.label} ({ref.digest[:16]}) is not in the lineage store {self.store.path}")
        verify_files(Path(rec.path), rec.files)
        self.used.append(rec)
        if self.mode == "online":
            prefix = f"{self.cfg.wandb.entity}/" if self.cfg.wandb.entity else ""
            self.run.use_artifact(f"{prefix}{self.cfg.wandb.project}/{ref.name}:{ref.alias}")
        return Path(rec.path)

    # outputs -------------------------------------------------------------------------------------------
    def staging(self, name: str) -> Path:
        d = self._staging_root / name
        d.mkdir(parents=True, exist_ok=False)
        return d

    def produce(self, name: str, type: str, directory: Path, metadata: dict | None = None) -> None:
        """Queue `directory` (from `staging`) as output `name`; it is moved into place only if the stage succeeds."""
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
            fsync_tree(staged)
            if final.exists():  # identical content already stored: keep that copy, if it is still intact
                verify_files(final, files)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
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


def _init_run(cfg: PipelineConfig, job_type: str, run_id: str, group: str | None, mode: str,
              config: dict) -> tuple[wandb.Run, str]:
    kwargs = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(wandb_dir(cfg)), id=run_id,
                  name=f"{job_type}-{run_id[:8]}", group=group, job_type=job_type, config=config,
                  reinit="create_new")
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=60)
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=settings, **kwargs), "online"
        except Exception as e:  # unreachable host, bad key: keep every record offline for a later `sync`
            msg = f"W&B online init failed ({type(e).__name__}: {e}); recording {job_type} offline for a later sync"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            mode = "offline"
    return wandb.init(mode=mode, settings=settings, **kwargs), mode


@contextmanager
def open_stage(cfg: PipelineConfig, job_type: str, flow_run_id: str | None = None) -> Iterator[Stage]:
    """One pipeline stage: a W&B run of `job_type` and its lineage record, committed only on success."""
    store = LineageStore(cfg.lineage_db)
    run_id = uuid.uuid4().hex[:12]
    group = f"flow-{flow_run_id}" if flow_run_id else None
    env = run_environment(cfg.train.seed, flow_run_id)
    config = {**cfg.flat(), "lineage": env}
    run, mode = _init_run(cfg, job_type, run_id, group, resolve_mode(cfg.wandb.mode), config)
    store.start_run(run_id, job_type, config=cfg.model_dump(mode="json"), env=env, flow_run_id=flow_run_id,
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
