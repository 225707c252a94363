"""How long W&B may take (`WandbTimeouts`) and the `wandb.Settings` of a run bounded by them: for a stage's run
and for the client of sync and audit --online."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import wandb

from prefect_wandb.settings import WandbSettings
from prefect_wandb.wandb.credentials import WandbCredentials, key_to_pass


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
    def of(cls, w: WandbSettings) -> WandbTimeouts:
        return cls(init=w.init_timeout, http=w.http_timeout, retries=w.http_retries,
                   artifact_wait=w.artifact_wait_timeout, finish=w.finish_timeout)

    def settings(self) -> dict:
        """`wandb.Settings` keywords for these bounds (wandb-core's GraphQL, file stream and file transfer)."""
        # private wandb API: the `x_*` settings are wandb's experimental ones (no stability promise); they are the
        # only way to bound wandb-core's request timeouts and retries.
        retry = dict(retry_max=self.retries, retry_wait_min_seconds=min(0.2, self.http),
                     retry_wait_max_seconds=min(5.0, self.http))
        out = {"init_timeout": self.init, "finish_timeout": self.finish, "finish_timeout_raises": True,
               "x_graphql_timeout_seconds": self.http, "x_file_stream_timeout_seconds": self.http,
               "x_file_transfer_timeout_seconds": max(self.http, 60.0)}
        for part in ("graphql", "file_stream", "file_transfer"):
            out.update({f"x_{part}_{k}": v for k, v in retry.items()})
        return out


def run_settings(creds: WandbCredentials | None, timeouts: WandbTimeouts, **extra) -> wandb.Settings:
    """The `wandb.Settings` of a run bounded by `timeouts`, on `creds.host` with `creds`' key where wandb would
    not find that key itself (`key_to_pass`). The same bounds go to wandb's process-wide settings, which
    `Run.use_artifact` and `wandb.Api` read."""
    quiet_terminal()
    bounds = {k: v for k, v in timeouts.settings().items() if k.startswith("x_")}
    wandb.setup(settings=wandb.Settings(**bounds))
    where = {}
    if creds is not None:
        where["base_url"] = creds.host
        if key := key_to_pass(creds):
            where["api_key"] = key
    return wandb.Settings(**where, **timeouts.settings(), **extra)


def quiet_terminal() -> None:
    """No wandb lines on the terminal: the stages say in one line each what happened to W&B. wandb prints its
    own (login notes, "Adding directory to artifact", wandb-core's "Fatal error while uploading data ... use
    `wandb sync`") by its process-wide settings, which the first `wandb.setup` of the process fixes; a run's
    `silent` (`QUIET`) does not reach them. So the library's first W&B call sets up wandb silent, unless
    WANDB_SILENT says what the user wants (and a process that set wandb up before keeps its choice)."""
    if "WANDB_SILENT" not in os.environ:
        wandb.setup(settings=wandb.Settings(silent=True))


# What every stage's `wandb.init` gets on top of its own settings: no terminal output or system metrics, and no
# requirements scan of its own. wandb reads every installed distribution's metadata at each `wandb.init` to write
# the run's requirements.txt (about 0.15 s a stage here, a third of a warm tiny flow); the list cannot change
# inside a process, so `write_requirements` writes it, read once per process, into each run's files instead.
# private wandb API: `x_disable_stats` and `x_save_requirements` are wandb's experimental settings.
QUIET = {"silent": True, "console": "off", "x_disable_stats": True, "x_save_requirements": False}


@cache
def _requirements() -> str:
    """`name==version` of every installed distribution, sorted, as wandb writes a run's requirements.txt."""
    seen = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={d.version}"
    return "".join(line + "\n" for _, line in sorted(seen.items()))


def write_requirements(run: wandb.Run) -> None:
    """The run's requirements.txt in its files folder (uploaded with the run, online or by `wandb sync`); a disabled
    run (`--wandb-mode disabled`) has no files folder and gets none."""
    if run.disabled:
        return
    Path(run.dir, "requirements.txt").write_text(_requirements())
