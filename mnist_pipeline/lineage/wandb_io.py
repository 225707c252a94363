"""The W&B boundary: the only module of the project that imports wandb.

- which host and key W&B would use, and why (`resolve_credentials`), and the stage's mode (`resolve_mode`);
- `start_run`: one stage's W&B run (`StageRun`), online when asked and reachable, else offline with a warning;
  `StageRun` is everything a stage asks of W&B (inputs, outputs, logs, `wandb.watch`, aliases, finish). W&B is an
  observer: after `start_run`, no exception from W&B leaves `StageRun`; each failed call is one warning line and
  one `WandbGap` (what W&B is missing), which the stage records in the lineage store for `mnist-pipeline sync`;
- `offline_records`: the records of an offline run's `.wandb` file (what `wandb sync` uploads);
- `WandbClient`: the real W&B for `mnist-pipeline sync` and `audit --online`, implementing the `WandbBackend`
  Protocol of `sync.py` (`recording.RecordingWandb` implements it too, in memory).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlparse

import numpy as np
import wandb
from wandb.errors import AuthenticationError
from wandb.sdk.lib.wbauth import AuthApiKey, HostUrl
from wandb.sdk.lib.wbauth.validation import check_api_key
from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import digest_alias, wandb_path, wandb_ref
from mnist_pipeline.lineage.store import NewArtifact

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- start-up costs
#
# Measured in issue 13 (docs/performance.md): wandb.init lists every installed distribution on each call, for the
# run's requirements file (`wandb.util.working_set`, 0.1-0.5 s a stage on two cores, six stages a flow); the list
# cannot change while the process runs, so it is read once and the same list is sent to every run. The first init
# of a process also imports wandb's launch package and starts wandb's service; `warm_up` does both ahead of time.


def _cached_working_set(_read=wandb.util.working_set, _cache: list = []):  # noqa: B006 (the cache, on purpose)
    if not _cache:
        _cache.append(tuple(_read()))
    return iter(_cache[0])


wandb.util.working_set = _cached_working_set  # what wandb.init calls (looked up on each call); same output


def warm_up() -> None:
    """Import what the first wandb.init imports and start wandb's service, e.g. while waiting for something else."""
    import wandb.sdk.launch.inputs.internal  # noqa: F401

    wandb.setup()


# --------------------------------------------------------------------------------------------- host, key, mode
#
# wandb 0.31 resolves them in two steps; we ask wandb's own objects for each rather than reading netrc or settings
# files by hand:
# 1. the host (`Settings.base_url`): WANDB_BASE_URL, else `base_url` in a settings file (the workspace file
#    `<dir>/wandb/settings`, then the system file `$WANDB_CONFIG_DIR/settings` or `~/.config/wandb/settings`, which
#    `wandb login --host URL` writes), else wandb's default host (`wandb.Settings().base_url`);
# 2. the key for that host (wandb's `_use_system_auth`, used by `wandb.init` and `wandb.Api`): WANDB_API_KEY (or
#    WANDB_IDENTITY_TOKEN_FILE), else the netrc entry `machine <host[:port]>` ($NETRC, ~/.netrc, ~/_netrc; what
#    `wandb login` writes), else `api_key` in a settings file when that file's host is this host.
# The settings are loaded into a fresh `wandb.Settings` the way `wandb.setup` loads its own, not read from the
# process-wide singleton (loaded once per process, kept even when the environment changes); `host` and `api_key`
# are then handed explicitly to `wandb.init` and `wandb.Api`, so W&B is reached exactly where we said.


@dataclass(frozen=True)
class WandbCredentials:
    """Where W&B records would go: `host` (wandb's base URL), the API key (never printed: not in repr/str), and
    in `host_source`/`key_source` where each came from. `problem` says why there is no usable key (None: usable).
    `mode` is wandb's own mode setting (`WANDB_MODE`, or `mode` in a settings file after `wandb offline`)."""

    host: str
    host_source: str
    key_source: str | None
    mode: str
    mode_source: str
    problem: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)

    @property
    def has_key(self) -> bool:
        return self.problem is None and self.key_source is not None

    @property
    def online(self) -> bool:
        """`--wandb-mode auto` records online exactly when this is true: wandb's mode is online and a key for the
        host was found (what a non-interactive `wandb.init()` needs; without one it stops at the login prompt)."""
        return self.has_key and self.mode == "online"

    def why(self) -> str:
        """One line for the console: host, key source (never the key) and, when offline, why."""
        head = f"W&B host {self.host} ({self.host_source})"
        if self.problem:
            return f"{head}; {self.problem}"
        if self.mode != "online":
            return f"{head}; key from {self.key_source}; wandb mode is {self.mode!r} ({self.mode_source})"
        return f"{head}; key from {self.key_source}"

    def __str__(self) -> str:
        return self.why()


def _fresh_settings(root_dir: str | os.PathLike | None, environ: dict[str, str]) -> wandb.Settings:
    """wandb's settings as `wandb.setup` would load them now: settings files, then `WANDB_*` variables."""
    s = wandb.Settings(silent=True)
    config_dir = environ.get("WANDB_CONFIG_DIR")
    system = pathlib.Path(config_dir).expanduser() / "settings" if config_dir else \
        pathlib.Path("~", ".config", "wandb", "settings").expanduser()
    s.settings_system = str(system)
    if root_dir is not None:
        s.root_dir = str(root_dir)
    elif environ.get("WANDB_DIR"):
        s.root_dir = environ["WANDB_DIR"]
    s.update_from_system_settings()
    s.update_from_env_vars(environ)
    return s


def resolve_credentials(root_dir: str | os.PathLike | None = None) -> WandbCredentials:
    """Which W&B host and key wandb would use, and why. `root_dir` is the `dir` the run is initialised with
    (its `wandb/settings` is the workspace settings file). Reads files and the environment only: no network."""
    environ = dict(os.environ)
    default_host = wandb.Settings().base_url
    try:
        s = _fresh_settings(root_dir, environ)
    except Exception as e:  # a malformed WANDB_* value: wandb.init would refuse it too
        return WandbCredentials(host=environ.get("WANDB_BASE_URL") or default_host, host_source="unreadable",
                                key_source=None, mode="offline", mode_source="unreadable",
                                problem=f"wandb settings are invalid ({type(e).__name__}: {' '.join(str(e).split())})")
    files = " / ".join(str(p) for p in s.read_system_settings().sources)
    if environ.get("WANDB_BASE_URL"):
        host_source = "WANDB_BASE_URL"
    elif s.base_url.rstrip("/") != default_host.rstrip("/"):
        host_source = f"settings file {files}"
    else:
        host_source = "wandb's default host"
    mode = "offline" if s.mode in ("offline", "dryrun") else s.mode
    mode_source = "WANDB_MODE" if environ.get("WANDB_MODE") else (
        f"settings file {files}" if mode != "online" else "wandb's default")
    common = dict(host_source=host_source, mode=mode, mode_source=mode_source)
    try:
        host = HostUrl(s.base_url).url
    except ValueError as e:
        return WandbCredentials(host=s.base_url, key_source=None, problem=f"the host is not usable: {e}", **common)

    def found(source: str, key: str | None) -> WandbCredentials:
        if key is not None and (bad := check_api_key(key)):
            return WandbCredentials(host=host, key_source=source, problem=f"the API key from {source} is "
                                    f"malformed: {bad}", **common)
        return WandbCredentials(host=host, key_source=source, api_key=key, **common)

    if environ.get("WANDB_API_KEY"):
        return found("WANDB_API_KEY", environ["WANDB_API_KEY"])
    if environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return found("WANDB_IDENTITY_TOKEN_FILE", None)
    try:
        auth = read_netrc_auth_with_source(host=HostUrl(host))  # $NETRC, ~/.netrc, ~/_netrc
    except AuthenticationError as e:
        return WandbCredentials(host=host, key_source="netrc", problem=f"the netrc key for {host} is malformed: "
                                f"{' '.join(str(e).split())}", **common)
    if auth is not None and isinstance(auth.auth, AuthApiKey):
        machine = host.split("://", 1)[-1].split("/", 1)[0]
        return found(f"netrc {auth.source} (machine {machine})", auth.auth.api_key)
    if s.api_key and HostUrl(host).is_same_url(s.base_url):
        return found(f"settings file {files} (api_key)", s.api_key)
    login = "wandb login" if host == HostUrl(default_host).url else f"wandb login --host {host}"
    return WandbCredentials(host=host, key_source=None,
                            problem=f"no W&B API key for {host}: set WANDB_API_KEY or run `{login}`", **common)


def base_url() -> str:
    """The W&B host wandb would talk to."""
    return resolve_credentials().host


def has_api_key() -> bool:
    """Whether wandb has an API key for its host."""
    return resolve_credentials().has_key


def resolve_mode(requested: str, root_dir: str | os.PathLike | None = None) -> str:
    """'auto' is online exactly when `wandb.init()` would be (`WandbCredentials.online`); else as requested."""
    if requested != "auto":
        return requested
    creds = resolve_credentials(root_dir)
    if not creds.online:
        log.debug("W&B: recording offline (`mnist-pipeline sync` uploads later): %s", creds.why())
    return "online" if creds.online else "offline"


def wandb_dir(cfg: PipelineConfig) -> Path:
    d = cfg.wandb.dir or (Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else cfg.lineage_db.parent)
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass(frozen=True)
class WandbTimeouts:
    """How long W&B may take before the pipeline stops waiting for it. wandb's defaults retry a failing request
    for minutes; a stage must not wait that long for an observer. `http` bounds one request, `retries` how many
    times wandb-core retries one, `init` an online `wandb.init`, `artifact_wait` the commit of a logged artifact
    (`Artifact.wait`), `finish` the upload at `run.finish()`."""

    init: float = 60.0
    http: float = 20.0
    retries: int = 3
    artifact_wait: float = 120.0
    finish: float = 120.0

    @classmethod
    def of(cls, cfg: PipelineConfig) -> WandbTimeouts:
        w = cfg.wandb
        return cls(init=w.init_timeout, http=w.http_timeout, retries=w.http_retries,
                   artifact_wait=w.artifact_wait_timeout, finish=w.finish_timeout)

    def settings(self) -> dict:
        """`wandb.Settings` keywords for these bounds (wandb-core's GraphQL, file stream and file transfer)."""
        retry = dict(retry_max=self.retries, retry_wait_min_seconds=min(0.2, self.http),
                     retry_wait_max_seconds=min(5.0, self.http))
        out = {"init_timeout": self.init, "finish_timeout": self.finish, "finish_timeout_raises": True,
               "x_graphql_timeout_seconds": self.http, "x_file_stream_timeout_seconds": self.http,
               "x_file_transfer_timeout_seconds": max(self.http, 60.0)}
        for part in ("graphql", "file_stream", "file_transfer"):
            out.update({f"x_{part}_{k}": v for k, v in retry.items()})
        return out


def run_settings(creds: WandbCredentials | None, timeouts: WandbTimeouts, **extra) -> wandb.Settings:
    """The `wandb.Settings` of a run bounded by `timeouts`, on `creds.host` with `creds`' key when given. The same
    bounds go to wandb's process-wide settings, which `Run.use_artifact` and `wandb.Api` read."""
    bounds = {k: v for k, v in timeouts.settings().items() if k.startswith("x_")}
    wandb.setup(settings=wandb.Settings(**bounds))
    where = {}
    if creds is not None:
        where["base_url"] = creds.host
        if creds.api_key:
            where["api_key"] = creds.api_key
    return wandb.Settings(**where, **timeouts.settings(), **extra)


def _one_line(e: BaseException, secret: str | None = None) -> str:
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    for s in {secret, os.environ.get("WANDB_API_KEY")}:
        if s:
            text = text.replace(s, "<API key>")  # an error that echoes the key must not put it in the logs
    return text[:500]


# --------------------------------------------------------------------------------------------- one stage's run


@dataclass(frozen=True)
class WandbGap:
    """Something a stage could not record in W&B because a W&B call failed: `action` 'upload' (`ref` an artifact
    version `[entity/]project/name:sha256-…`, or the run folder when `call` is 'finish'), 'use' (an input edge,
    `ref` the input's version) or 'aliases' (`ref` the version, `detail` the aliases). `call` names the failed
    W&B call, `error` its one-line error."""

    action: str
    ref: str
    call: str
    error: str
    detail: str = ""


class StageRun:
    """One stage's W&B run: what the stage lifecycle (`stage.py`) asks of W&B, and nothing else.

    Online, every W&B call is guarded: an exception becomes one warning line naming the call, and a `WandbGap`
    in `gaps`; after the first failure the run's later network calls are skipped (recorded as gaps too) rather
    than each waiting out its timeouts, and the host is avoided by the next stages of this process
    (`ONLINE_RETRY_AFTER_S`), which then record offline."""

    def __init__(self, cfg: PipelineConfig, run: wandb.Run, mode: str, run_id: str, job_type: str = "",
                 timeouts: WandbTimeouts | None = None):
        self.cfg, self.run, self.mode, self.run_id, self.job_type = cfg, run, mode, run_id, job_type
        self.timeouts = timeouts or WandbTimeouts.of(cfg)
        self._watched = None
        self.gaps: list[WandbGap] = []
        self.failed_call: str | None = None  # the first W&B call that failed, if any
        self._secret: str | None = None  # the API key in use, masked in every message

    @property
    def online(self) -> bool:
        return self.mode == "online"

    @property
    def url(self) -> str | None:
        if not self.online:
            return None
        try:
            return self.run.url
        except Exception:
            return None

    @property
    def run_dir(self) -> str:
        return str(Path(self.run.dir).parent)

    def _path(self, name: str, digest: str) -> str:
        return wandb_ref(self.cfg.wandb.entity, self.cfg.wandb.project, name, digest)

    def _failed(self, call: str, e: BaseException, gaps: Sequence[WandbGap] = ()) -> None:
        """One warning line naming the failed call; the gaps it leaves recorded; the host avoided for a while."""
        err = _one_line(e, self._secret)
        self.gaps.extend(WandbGap(g.action, g.ref, g.call, err, g.detail) for g in gaps)
        what = "; W&B is missing " + ", ".join(f"{g.action} {g.ref}" for g in gaps) if gaps else ""
        log.warning("W&B %s failed in %s run %s (%s)%s; the stage goes on, the lineage store keeps everything, "
                    "`mnist-pipeline sync` completes W&B", call, self.job_type or "stage", self.run_id, err, what)
        if self.failed_call is None:
            self.failed_call = call
            _online_failures[_host_key()] = (time.monotonic(), f"{call} failed: {err}")

    def _skip(self, gaps: Sequence[WandbGap]) -> None:
        """After a failure, later calls are not sent: recorded as gaps, without another warning per call."""
        self.gaps.extend(WandbGap(g.action, g.ref, g.call, f"not sent: {self.failed_call} failed earlier in "
                                  "this run", g.detail) for g in gaps)

    def _guard(self, call: str, fn: Callable[[], object], gaps: Sequence[WandbGap] = (), network: bool = True):
        """Run one W&B call; on any exception: warning, gaps, and None. Never raises."""
        if network and self.failed_call is not None:
            self._skip(gaps)
            return None
        try:
            return fn()
        except Exception as e:
            self._failed(call, e, gaps)
            return None

    def use_artifact(self, name: str, digest: str) -> None:
        """Online: declare the exact version (`name:sha256-…`) as an input. Offline wandb refuses use_artifact:
        the lineage store keeps the edge for `mnist-pipeline sync`."""
        if self.online:
            ref = self._path(name, digest)
            self._guard("use_artifact", lambda: self.run.use_artifact(ref), [WandbGap("use", ref, "use_artifact", "")])

    def set_aliases(self, name: str, digest: str, aliases: list[str], registry_path: str | None = None) -> bool:
        """Online: add `aliases` to the exact W&B version (W&B moves an alias off the version that held it) and
        link it into `registry_path`. True only if all of it reached W&B; offline, or when a call failed, False
        (the store keeps the decision for `sync`)."""
        if not self.online:
            return False
        ref = self._path(name, digest)
        gap = [WandbGap("aliases", ref, "alias save", "", ",".join(aliases))]

        def save():
            art = self.run.use_artifact(ref)
            art.aliases = sorted(set(art.aliases) | set(aliases))
            art.save()
            return art

        art = self._guard("alias save", save, gap)
        if art is None:
            return False
        if registry_path:
            linked = self._guard("registry link", lambda: self.run.link_artifact(art, registry_path) or True,
                                 [WandbGap("aliases", ref, "registry link", "", f"link to {registry_path}")])
            return bool(linked)
        return True

    def log(self, data: dict, step: int | None = None) -> None:
        self._guard("log", lambda: self.run.log(data, step=step), network=False)

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
        self._guard("watch", lambda: self.run.watch(model, criterion, log="all", log_freq=log_freq), network=False)

    def unwatch(self) -> None:
        if self._watched is not None:
            self._guard("unwatch", lambda: self.run.unwatch(self._watched), network=False)
            self._watched = None
        if wandb.run is self.run:
            wandb.run = None

    def log_confusion_matrix(self, key: str, y_true: Sequence[int], preds: Sequence[int],
                             class_names: Sequence[str]) -> None:
        self._guard("log", lambda: self.run.log({key: wandb.plot.confusion_matrix(
            y_true=list(y_true), preds=list(preds), class_names=list(class_names))}), network=False)

    def log_images(self, key: str, images: Sequence, captions: Sequence[str]) -> None:
        """uint8 arrays as a list of `wandb.Image`s with captions: saved as PNG files under the run's
        `files/media/images/`, which offline runs keep and `wandb sync` uploads (a Table cell holding an image
        reaches an offline run as the string "Image" in wandb 0.31)."""
        if len(images) != len(captions):
            raise ValueError(f"{key}: {len(images)} images but {len(captions)} captions")
        if images:
            self._guard("log", lambda: self.run.log({key: [
                wandb.Image(np.asarray(im, dtype=np.uint8), caption=c)
                for im, c in zip(images, captions, strict=True)]}), network=False)

    def log_artifacts(self, arts: Sequence[NewArtifact], summary: dict) -> None:
        """Each output as a W&B Artifact (aliases `latest` and `sha256-<digest16>`), then the run's summary.

        Online, the stage then waits (at most `artifact_wait` seconds each) until W&B has committed every one, so
        the next stage's `use_artifact` finds it; wandb logs artifacts in the background and reports a failed
        upload nowhere else (`run.finish()` returns normally), so the wait is also how a failure is seen."""
        logged = []
        for a in arts:
            gap = [WandbGap("upload", self._path(a.name, a.digest), "log_artifact", "")]

            def send(a=a):
                art = wandb.Artifact(a.name, type=a.type, metadata=a.metadata)
                art.add_dir(a.path)
                return self.run.log_artifact(art, aliases=["latest", digest_alias(a.digest)])

            art = self._guard("log_artifact", send, gap)
            if art is not None:
                logged.append((a, art))
        if self.online:
            for a, art in logged:
                gap = [WandbGap("upload", self._path(a.name, a.digest), "artifact wait", "")]
                self._guard("artifact wait", partial(art.wait, timeout=self.timeouts.artifact_wait), gap)
        if summary:
            self._guard("summary", lambda: self.run.summary.update(summary), network=False)

    def finish(self, failed: bool = False) -> None:
        """Finish the W&B run (upload bounded by `finish` seconds). A failure here leaves the run's history in its
        folder: recorded as a gap, never raised."""
        self.unwatch()
        gap = [WandbGap("upload", self.run_dir, "finish", "", "history and files may be incomplete in W&B")]
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            if self.online:
                self._failed("finish", e, gap)
            else:
                log.warning("W&B finish failed for offline run %s (%s)", self.run_id, _one_line(e))


# --------------------------------------------------------------------------------------------- init and offline fallback


# W&B host -> (monotonic time of the last failure in this process, its reason). After one failure (at init or a
# later call), the next stages of this process record offline straight away for ONLINE_RETRY_AFTER_S, instead of
# each waiting out the timeouts again.
_online_failures: dict[str, tuple[float, str]] = {}
ONLINE_RETRY_AFTER_S = 600.0


def _host_key() -> str:
    return resolve_credentials().host


def recent_failure(host: str | None = None) -> str | None:
    """Why this process last gave up on W&B at `host` (default: `resolve_credentials().host`), if it did."""
    failed = _online_failures.get(host or _host_key())
    return failed[1] if failed else None


def _fall_back_offline(job_type: str, reason: str, what: str = "failed") -> None:
    msg = (f"W&B online init {what} ({reason}); recording {job_type} offline for a later `mnist-pipeline sync`")
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
    timeouts = WandbTimeouts.of(cfg)
    quiet = dict(silent=True, console="off", x_disable_stats=True)
    if mode == "online":
        creds = resolve_credentials(wandb_dir(cfg))
        failed = _online_failures.get(creds.host)
        if failed is not None and time.monotonic() - failed[0] < ONLINE_RETRY_AFTER_S:
            _fall_back_offline(job_type, f"W&B failed {time.monotonic() - failed[0]:.0f} s ago in this process: "
                               f"{failed[1]}", "skipped")
            mode = "offline"
        elif not creds.has_key:
            _fall_back_offline(job_type, creds.why(), "skipped")
            mode = "offline"
        else:
            try:
                run = wandb.init(mode="online", settings=run_settings(creds, timeouts, **quiet), **kwargs(run_id))
                _online_failures.pop(creds.host, None)
                stage_run = StageRun(cfg, run, "online", run_id, job_type, timeouts)
                stage_run._secret = creds.api_key
                return stage_run
            except Exception as e:  # unreachable host, bad key: keep every record offline for a later `sync`
                reason = _one_line(e, creds.api_key)
                _online_failures[creds.host] = (time.monotonic(), reason)
                _fall_back_offline(job_type, reason)
                # The aborted online attempt left a folder under the same run id; `wandb sync --sync-all` must
                # find only the offline run that holds the records.
                for d in (wandb_dir(cfg) / "wandb").glob(f"run-*-{run_id}"):
                    shutil.rmtree(d, ignore_errors=True)
                mode, run_id = "offline", uuid.uuid4().hex[:12]
    run = wandb.init(mode=cast(Literal["online", "offline", "disabled"], mode), settings=wandb.Settings(init_timeout=timeouts.init, **quiet), **kwargs(run_id))
    return StageRun(cfg, run, mode, run_id, job_type, timeouts)


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
            rec = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module
            rec.ParseFromString(pending)
            pending = b""
            yield rec


# --------------------------------------------------------------------------------------------- the real W&B for sync and audit --online


class WandbUnavailable(RuntimeError):
    """No usable W&B: no API key, the host unreachable, or the key refused. Raised before anything is changed."""


def wandb_error_line(e: BaseException) -> str:
    """One line for any error out of W&B (ours, wandb's, the network's), with the API key masked."""
    if isinstance(e, WandbUnavailable):
        return str(e)
    return f"W&B failed: {_one_line(e)}"


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
            raise WandbUnavailable(f"W&B at {base} refused the API key or failed ({_one_line(e, creds.api_key)}; "
                                   f"key from {creds.key_source})") from None
        if not entity:
            raise WandbUnavailable(f"W&B at {base} names no default entity for this API key")
        self._entity = entity
        return entity

    def _resumed(self, entity: str | None, project: str, run_id: str, d: str):
        self.check()
        settings = run_settings(self.creds, self.timeouts, silent=True, console="off", x_disable_stats=True)
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
        with tempfile.TemporaryDirectory(prefix="mnist-sync-") as d:
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
        with tempfile.TemporaryDirectory(prefix="mnist-sync-") as d:
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
