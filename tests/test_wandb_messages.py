"""What a person reads about W&B on the console (issue 30, item 10): the API key is handed to `wandb.init` only
where wandb would not find it itself (else wandb 0.31 prints "Changing session credentials" at every stage), and
with W&B gone mid-run each stage says so in one plain line (no `AuthenticationError` for a refused connection, no
line twice, no wandb lines of its own) while the run goes on offline and the store keeps what W&B missed.

The key choice is checked in this process (no network); the console in a process of its own, against the W&B
stand-in (`tests/wandb_standin`), stopped in the middle of a stage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from prefect_wandb.wandb.credentials import WandbCredentials, key_to_pass, plain_line
from tests.helpers import REPO

KEY, OTHER = "k" * 40, "o" * 40
HOST = "http://127.0.0.1:9"  # nothing is sent: the key choice reads files, the environment and wandb's session


def _creds(source: str, key: str = KEY) -> WandbCredentials:
    return WandbCredentials(host=HOST, host_source="WANDB_BASE_URL", key_source=source, mode="online",
                            mode_source="wandb's default", api_key=key)


def test_the_key_goes_to_wandb_init_only_where_wandb_would_not_find_it():
    from wandb.sdk.lib.wbauth import AuthApiKey, HostUrl, unauthenticate_session, use_explicit_auth

    from prefect_wandb.wandb.settings import WandbTimeouts, run_settings

    before = unauthenticate_session(update_settings=False)
    try:
        # wandb reads WANDB_API_KEY and the netrc entry itself, as `resolve_credentials` did
        assert key_to_pass(_creds("WANDB_API_KEY")) is None
        assert key_to_pass(_creds("netrc /home/u/.netrc (machine 127.0.0.1:9)")) is None
        assert run_settings(_creds("WANDB_API_KEY"), WandbTimeouts()).api_key is None
        # a settings file's key: wandb reads only the settings it loaded once per process
        assert key_to_pass(_creds("settings file /home/u/.config/wandb/settings (api_key)")) == KEY
        # once wandb holds a session key for the host: the same key is not passed again (that is what printed
        # "Changing session credentials" at every stage), another one is
        use_explicit_auth(AuthApiKey(host=HostUrl(HOST), api_key=KEY), source="test")
        assert key_to_pass(_creds("settings file /s (api_key)")) is None
        assert key_to_pass(_creds("WANDB_API_KEY", OTHER)) == OTHER
        assert run_settings(_creds("WANDB_API_KEY", OTHER), WandbTimeouts()).api_key == OTHER
        assert key_to_pass(_creds("WANDB_API_KEY", None)) is None  # no key (an identity token file): wandb's own
    finally:
        unauthenticate_session(update_settings=False)
        if before is not None:
            use_explicit_auth(before, source="test")


def test_an_unreachable_host_is_said_in_plain_words_whatever_wandb_wrapped_it_in():
    from wandb.errors import AuthenticationError

    dead = AuthenticationError(f"Failed to verify credentials with {HOST}: POST {HOST}/graphql giving up after 4 "
                               f'attempt(s): Post "{HOST}/graphql": dial tcp 127.0.0.1:9: connect: connection refused')
    assert plain_line(dead, HOST) == f"W&B at {HOST} is unreachable (connection refused)"
    assert plain_line(ValueError("dial tcp: lookup w.example: no such host"), HOST).endswith("(host not found)")
    busy = AuthenticationError(f"Failed to verify credentials with {HOST}: Failed to execute API request: the "
                               "service process is busy and did not respond in time.")
    assert plain_line(busy, HOST) == f"W&B at {HOST} did not answer in time"
    # anything else is wandb's own words, the key masked
    assert plain_line(RuntimeError(f"registry not found for {KEY}"), HOST, KEY) == \
        "RuntimeError: registry not found for <API key>"


# Three stages online against the stand-in; it stops inside the second. Fast W&B bounds: the failing stage waits
# seconds, not minutes. stderr is the console; stdout one line of facts from the store.
SCRIPT = textwrap.dedent("""
    import json, logging, sys
    from tests.wandb_standin import Standin
    from prefect_wandb import LineageSettings, WandbSettings, open_stage
    from prefect_wandb.store import LineageStore
    from prefect_wandb.sync import plan_sync

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    base, w = sys.argv[1], Standin().start()
    import os
    os.environ.update(WANDB_BASE_URL=w.url, WANDB_API_KEY=w.api_key)
    def settings(finish):
        return LineageSettings(store=f"{base}/lineage.db", artifacts=f"{base}/art", wandb=WandbSettings(
            project="p", mode="online", dir=f"{base}/wandb", http_timeout=2, http_retries=0, artifact_wait_timeout=5,
            finish_timeout=finish))
    modes = []
    for i in range(3):
        print(f"-- stage {i}", file=sys.stderr, flush=True)
        with open_stage(settings(2 if i == 1 else 60), f"job{i}") as stage:
            out = stage.staging("out")
            (out / "f.txt").write_text(str(i))
            stage.produce(f"out{i}", "thing", out)
            if i == 1:
                w.stop()  # W&B gone while this stage's run is online
        modes.append(stage.mode)
    store = LineageStore(f"{base}/lineage.db")
    print(json.dumps({"modes": modes, "status": [r.status for r in store.runs()],
                      "to_sync": sorted(r.job_type for r in plan_sync(store).runs
                                        if any(a.status != "done" for a in r.actions))}))
""")


@pytest.mark.slow  # a process of its own: wandb-core, the stand-in, one stage waiting out W&B's bounds
def test_wandb_gone_mid_run_is_one_plain_line_per_stage_and_the_run_goes_on_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), WANDB_HTTP_TIMEOUT="2")  # wandb's credential check
    (tmp_path / "wandb").mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    facts = json.loads(proc.stdout.splitlines()[-1])
    assert facts["modes"] == ["online", "online", "offline"] and facts["status"] == ["finished"] * 3
    assert facts["to_sync"] == ["job1", "job2"]  # what W&B missed is on record for `sync`
    console = proc.stderr.split("-- stage ")[1:]
    lines = {int(part[0]): [ln for ln in part.splitlines()[1:] if ln.strip()] for part in console}
    assert lines[0] == [], proc.stderr  # online and fine: nothing, no "Changing session credentials" either
    for stage in (1, 2):
        assert len(lines[stage]) == 1, proc.stderr
        [line] = lines[stage]
        # which of the two wandb meets first depends on timing: a refused connection, or its own wait running out
        assert line.startswith("WARNING prefect_wandb.") and re.search(
            r"W&B at http://127\.0\.0\.1:\d+ (is unreachable \(connection refused\)|did not answer in time)", line), line
        assert "AuthenticationError" not in line and "`prefect-wandb sync`" in line, line
    assert "W&B log_artifact failed in job1 run " in lines[1][0] or "W&B artifact wait failed in job1" in lines[1][0]
    assert "recording job2 offline" in lines[2][0]
    assert "wandb:" not in proc.stderr  # wandb's own lines (its "use `wandb sync`" advice among them): none

