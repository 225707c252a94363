"""The W&B round-trip tests' `mnist-pipeline` commands called in this process (`main([...])`), as
`tests.roundtrip.cli` runs them in a process of their own, with the same environment (`roundtrip.env_for`).

This is sound because every wandb call of the commands is handed W&B's host explicitly (and the key wherever wandb
would not find that key itself: `key_to_pass`): `WandbClient`
(`sync`, `sync --verify`, `audit --online`, `rollback`) makes a `wandb.Api(overrides={"base_url": ...})` and
`run_settings` a run's `wandb.Settings(base_url=...)` from `resolve_credentials()`, so the hosts this process used
before (another module's stand-in) do not matter. The one process-wide memory of the commands, the stage runs'
"W&B failed at this host N s ago" (`stage_run._online_failures`), starts empty, as in a new process, and what a
command leaves there is not kept."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess

import pytest


@contextlib.contextmanager
def wandb_env(env: dict):
    """This process in env's W&B variables and HOME (no other WANDB_ variable, no NETRC), in env's HOME folder, with
    no memory of W&B failures (`stage_run._online_failures` empty); all put back at the end."""
    from prefect_wandb.wandb import stage_run

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("WANDB_") or name == "NETRC":
                mp.delenv(name)
        for name, value in env.items():
            if name.startswith("WANDB_") or name == "HOME":
                mp.setenv(name, value)
        mp.chdir(env["HOME"])
        mp.setattr(stage_run, "_online_failures", {})
        yield


def cli_here(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`mnist-pipeline *args` in this process (`main([...])`) in `wandb_env(env)`, stdout and stderr captured:
    what `roundtrip.cli` returns."""
    from mnist_pipeline.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with wandb_env(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["mnist-pipeline", *args], int(code), out.getvalue(), err.getvalue())
