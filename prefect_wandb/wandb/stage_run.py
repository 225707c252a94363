"""One stage's W&B run: `start_run` -> `StageRun`, online when asked and reachable, else offline with a warning,
and the process-wide memory of a host that failed (`recent_failure`)."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, cast

import numpy as np
import wandb

from prefect_wandb.artifact_files import local_folder
from prefect_wandb.records import WandbGap
from prefect_wandb.refs import digest_alias, wandb_ref
from prefect_wandb.settings import LineageSettings, WandbSettings
from prefect_wandb.store import NewArtifact
from prefect_wandb.wandb.credentials import masked_line, plain_line, resolve_credentials
from prefect_wandb.wandb.folder import wandb_dir
from prefect_wandb.wandb.settings import QUIET, WandbTimeouts, quiet_terminal, run_settings, write_requirements

log = logging.getLogger(__name__)


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


class StageRun:
    """One stage's W&B run: what the stage lifecycle (`stage.py`) asks of W&B, and nothing else.

    Online, every W&B call is guarded: an exception becomes one warning line naming the call, and a `WandbGap`
    in `gaps`; after the first failure the run's later network calls are skipped (recorded as gaps too) rather
    than each waiting out its timeouts, and the host is avoided by the next stages of this process
    (`ONLINE_RETRY_AFTER_S`), which then record offline."""

    def __init__(self, wb: WandbSettings, run: wandb.Run, mode: str, run_id: str, job_type: str = "",
                 timeouts: WandbTimeouts | None = None, command: str = "prefect-wandb"):
        self.settings, self.run, self.mode, self.run_id, self.job_type = wb, run, mode, run_id, job_type
        self.command = command  # the operator command the messages name (`<command> sync`)
        self.timeouts = timeouts or WandbTimeouts.of(wb)
        self._watched = None
        self.gaps: list[WandbGap] = []
        self.confirmed: list[str] = []  # the versions W&B took (see `log_artifacts`)
        self.failed_call: str | None = None  # the first W&B call that failed, if any
        self._secret: str | None = None  # the API key in use, masked in every message
        self._host: str | None = None  # the W&B host in use (online)

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
        return wandb_ref(self.settings.entity, self.settings.project, name, digest)

    def _failed(self, call: str, e: BaseException, gaps: Sequence[WandbGap] = ()) -> None:
        """The first failure of the run: one warning line naming the call and, in plain words, why (the host
        unreachable, whatever wandb wrapped that in); the gaps it leaves recorded with the full error; the host
        avoided for a while. A later failure of the same run (its `finish`) adds its gaps without another line."""
        err = masked_line(e, self._secret)
        self.gaps.extend(WandbGap(g.action, g.ref, g.call, err, g.detail) for g in gaps)
        if self.failed_call is not None:
            return
        said = plain_line(e, self._host, self._secret)
        what = "; W&B is missing " + ", ".join(f"{g.action} {g.ref}" for g in gaps) if gaps else ""
        log.warning("W&B %s failed in %s run %s (%s)%s; the stage goes on, the lineage store keeps everything, "
                    "`%s sync` completes W&B", call, self.job_type or "stage", self.run_id, said, what, self.command)
        self.failed_call = call
        _online_failures[_host_key()] = (time.monotonic(), f"{call} failed: {said}")

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
        the lineage store keeps the edge for `sync`."""
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
            # the promote run uses the model in the lineage store too (`Stage.record`): the same input edge
            art = self.run.use_artifact(ref)
            art.aliases = sorted(set(art.aliases) | set(aliases))
            art.save()
            return art

        art = self._guard("alias save", save, gap)
        if art is None:
            return False
        if registry_path:
            # the registry's copy carries the aliases too (`production`), not only the `latest` W&B gives it
            linked = self._guard("registry link",
                                 lambda: self.run.link_artifact(art, registry_path, aliases=list(aliases)) or True,
                                 [WandbGap("aliases", ref, "registry link", "", f"link to {registry_path}")])
            return bool(linked)
        return True

    def move_aliases(self, name: str, digest: str, aliases: list[str], registry_path: str | None = None) -> bool:
        """Online: put `aliases` on a version other than the one this run decided about, through W&B's public API
        and without an input edge: `alias_sync.follow_store`'s correction when another flow's later decision
        reached W&B first. True when W&B took them; offline or failed, False (a gap, for `sync`)."""
        if not self.online:
            return False
        ref = self._path(name, digest)

        def save() -> bool:
            art = wandb.Api(overrides={"base_url": self._host}, api_key=self._secret,
                            timeout=int(self.timeouts.http)).artifact(ref)
            missing = [a for a in aliases if a not in art.aliases]
            if missing:
                art.aliases.extend(missing)
                art.save()
            if registry_path:
                art.link(registry_path, aliases=list(aliases))
            return True

        return bool(self._guard("alias save", save, [WandbGap("aliases", ref, "alias save", "", ",".join(aliases))]))

    def log(self, data: dict, step: int | None = None) -> None:
        self._guard("log", lambda: self.run.log(data, step=step), network=False)

    def watch(self, model, criterion=None, log_freq: int = 10) -> None:
        """wandb.watch(log="all") on this run.

        wandb's torch hooks write to the process-global `wandb.run` (reinit="create_new" never sets it), so
        this run is made the global one while the stage lasts. If another live run already holds it (a second
        training in the same process), watching is skipped with a warning rather than mixing the two runs.
        """
        holder = wandb.run
        # private wandb API: `Run._is_finished`; a finished run may stay in `wandb.run` and there is no public
        # way to ask whether it is finished.
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

    def pending_gaps(self, arts: Sequence[NewArtifact]) -> list[WandbGap]:
        """The gaps that stand in the store, committed with the outputs, until W&B has them (`confirmed`): a
        process killed between the store's commit and W&B's leaves them for `sync` to complete."""
        if self.mode == "disabled":
            return []
        return [WandbGap("upload", self._path(a.name, a.digest), "unconfirmed", "the stage ended before W&B "
                         "confirmed this version (the process was killed or crashed)") for a in arts]

    def log_artifacts(self, arts: Sequence[NewArtifact], summary: dict) -> None:
        """Each output as a W&B Artifact (aliases `latest` and `sha256-<digest16>`), then the run's summary.

        Called after the lineage store committed them. Online, the stage then waits (at most `artifact_wait`
        seconds each) until W&B has committed every one, so the next stage's `use_artifact` finds it; wandb logs
        artifacts in the background and reports a failed upload nowhere else (`run.finish()` returns normally),
        so the wait is also how a failure is seen. Each version W&B took is added to `confirmed` (offline: written
        to the run's file).

        The files are logged as copies (`add_dir` of the local folder: for a version in S3, this host's cache), not
        as `add_reference`s to S3: W&B's servers usually cannot reach a private S3 endpoint, a reference is
        checksummed by its ETag where the store has sha256, and so `audit --online` verifies a version the same way
        wherever its files are stored."""
        logged = []
        for a in arts:
            gap = [WandbGap("upload", self._path(a.name, a.digest), "log_artifact", "")]

            def send(a=a):
                art = wandb.Artifact(a.name, type=a.type, metadata=a.metadata)
                art.add_dir(str(local_folder(a.path, a.files)))
                return self.run.log_artifact(art, aliases=["latest", digest_alias(a.digest)])

            art = self._guard("log_artifact", send, gap)
            if art is not None:
                logged.append((a, art))
        if self.online:
            for a, art in logged:
                gap = [WandbGap("upload", self._path(a.name, a.digest), "artifact wait", "")]
                if self._guard("artifact wait", partial(art.wait, timeout=self.timeouts.artifact_wait),
                               gap) is not None:
                    self.confirmed.append(self._path(a.name, a.digest))
        else:
            self.confirmed += [self._path(a.name, a.digest) for a, _ in logged]
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
                log.warning("W&B finish failed for offline run %s (%s)", self.run_id, masked_line(e))


def _fall_back_offline(job_type: str, reason: str, what: str = "failed", command: str = "prefect-wandb") -> None:
    """One line, once: the stage's W&B run is offline, and why."""
    log.warning("W&B online init %s (%s); recording %s offline for a later `%s sync`", what, reason, job_type,
                command)


def start_run(settings: LineageSettings, job_type: str, run_id: str, group: str | None, mode: str,
              config: dict) -> StageRun:
    """The stage's W&B run: online if asked and reachable, else offline under a fresh id (wandb keeps the
    failed online attempt's id "in use" for the life of the process)."""
    def kwargs(run_id: str) -> dict:
        return dict(project=w.project, entity=w.entity, dir=str(wandb_dir(settings)), id=run_id,
                    name=f"{job_type}-{run_id[:8]}", group=group, job_type=job_type, config=config,
                    reinit="create_new")
    w = settings.wandb
    timeouts = WandbTimeouts.of(w)
    quiet_terminal()
    if mode == "online":
        creds = resolve_credentials(wandb_dir(settings))
        failed = _online_failures.get(creds.host)
        if failed is not None and time.monotonic() - failed[0] < ONLINE_RETRY_AFTER_S:
            _fall_back_offline(job_type, f"W&B failed {time.monotonic() - failed[0]:.0f} s ago in this process: "
                               f"{failed[1]}", "skipped")
            mode = "offline"
        elif not creds.has_key:
            _fall_back_offline(job_type, creds.why(), "skipped", command=settings.command)
            mode = "offline"
        else:
            try:
                run = wandb.init(mode="online", settings=run_settings(creds, timeouts, **QUIET), **kwargs(run_id))
                write_requirements(run)
                _online_failures.pop(creds.host, None)
                stage_run = StageRun(w, run, "online", run_id, job_type, timeouts, settings.command)
                stage_run._secret, stage_run._host = creds.api_key, creds.host
                return stage_run
            except Exception as e:  # unreachable host, bad key: keep every record offline for a later `sync`
                reason = plain_line(e, creds.host, creds.api_key)
                _online_failures[creds.host] = (time.monotonic(), reason)
                _fall_back_offline(job_type, reason, command=settings.command)
                # The aborted online attempt left a folder under the same run id; `wandb sync --sync-all` must
                # find only the offline run that holds the records.
                for d in (wandb_dir(settings) / "wandb").glob(f"run-*-{run_id}"):
                    shutil.rmtree(d, ignore_errors=True)
                mode, run_id = "offline", uuid.uuid4().hex[:12]
    run = wandb.init(mode=cast(Literal["online", "offline", "disabled"], mode),
                     settings=wandb.Settings(init_timeout=timeouts.init, **QUIET), **kwargs(run_id))
    write_requirements(run)
    return StageRun(w, run, mode, run_id, job_type, timeouts, settings.command)


