"""What the real wandb 0.31 SDK does against W&B endpoints that fail (the loopback stand-in, no patching).

These pin the SDK behaviour the pipeline's W&B boundary is built on: `wandb.init` gets online against the stand-in;
after that (a fault on every operation after init's) every artifact call fails the way W&B fails it, and only `Artifact.wait` tells (the
failure of a logged artifact is otherwise silent: `run.finish()` returns normally); a closed port or a host that
never answers fails `wandb.init` within the bounds we set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import wandb

from prefect_wandb.wandb.credentials import resolve_credentials
from prefect_wandb.wandb.settings import WandbTimeouts, run_settings
from tests.wandb_standin import ANY, API_KEY, SilentServer, closed_port, failing

# what the SDK raised in these tests: wandb's own errors (CommError for API calls, Error for init), ValueError from
# Artifact.wait for a failed upload, TimeoutError when a wait runs out
WANDB_ERRORS = (wandb.errors.Error, ValueError, TimeoutError)
FAST = WandbTimeouts(init=8, http=2, retries=1, artifact_wait=6, finish=6)
# A host that never answers: what the SDK does is wait out the bound it meets, whatever its size, so those tests set
# that bound short (the rest keep FAST's, so a good init or a failure W&B reports is never cut short by a timeout).
HANG = WandbTimeouts(init=8, http=2, retries=1, artifact_wait=1, finish=1)
SILENT = WandbTimeouts(init=3, http=2, retries=1, artifact_wait=6, finish=6)


@pytest.fixture
def loopback_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def start(url: str, monkeypatch, d: Path, timeouts: WandbTimeouts = FAST):
    monkeypatch.setenv("WANDB_BASE_URL", url)
    creds = resolve_credentials()
    assert creds.online and creds.host == url
    return wandb.init(project="p", mode="online", dir=str(d), reinit="create_new",
                      settings=run_settings(creds, timeouts, silent=True, console="off", x_disable_stats=True))


def artifact(d: Path) -> wandb.Artifact:
    (d / "payload").mkdir(exist_ok=True)
    (d / "payload" / "a.txt").write_text("hello")
    art = wandb.Artifact("thing", type="data")
    art.add_dir(str(d / "payload"))
    return art


def test_init_gets_online_against_the_stand_in(loopback_env, monkeypatch):
    with failing() as w:
        run = start(w.url, monkeypatch, loopback_env)
        assert run.url.startswith(w.url) and not run.settings._offline
        run.log({"x": 1})
        run.finish()
    assert "UpsertBucket" in w.operations()


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
@pytest.mark.parametrize("fault", ["http-401", "http-429", "http-500", "graphql-error", "hang"])
def test_artifact_calls_fail_after_a_good_init_and_only_wait_tells(loopback_env, monkeypatch, fault):
    bounds = HANG if fault == "hang" else FAST
    with failing(fault) as w:
        run = start(w.url, monkeypatch, loopback_env, bounds)
        logged = run.log_artifact(artifact(loopback_env), aliases=["latest", "sha256-0123456789abcdef"])
        t = time.monotonic()
        with pytest.raises(WANDB_ERRORS):
            logged.wait(timeout=bounds.artifact_wait)
        assert time.monotonic() - t < bounds.artifact_wait + 10
        t = time.monotonic()
        with pytest.raises(WANDB_ERRORS):
            run.use_artifact("p/thing:sha256-0123456789abcdef")
        assert time.monotonic() - t < 30
        t = time.monotonic()
        try:
            run.finish()  # wandb does not raise for the lost artifact; bounded by finish_timeout
        except TimeoutError:
            assert fault == "hang"
        assert time.monotonic() - t < bounds.finish + 10
    assert "CreateArtifact" in w.operations() or fault == "hang"


@pytest.mark.slow
def test_connection_refused_fails_init_quickly(loopback_env, monkeypatch):
    t = time.monotonic()
    with pytest.raises(WANDB_ERRORS, match="connection refused"):
        start(closed_port(), monkeypatch, loopback_env)
    assert time.monotonic() - t < FAST.init + 5


@pytest.mark.slow  # waits out real timeouts against a loopback endpoint
def test_a_host_that_never_answers_fails_init_at_init_timeout(loopback_env, monkeypatch):
    with SilentServer() as s:
        t = time.monotonic()
        with pytest.raises(WANDB_ERRORS):
            start(s.url, monkeypatch, loopback_env, SILENT)
        assert time.monotonic() - t < SILENT.init + 5


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["http-401", "http-500", "graphql-error"])
def test_init_itself_refused(loopback_env, monkeypatch, fault):
    with failing(fault, at=ANY) as w, pytest.raises(WANDB_ERRORS):
        start(w.url, monkeypatch, loopback_env)
    assert w.operations()[:1] == ["UpsertBucket"]
