"""Which W&B host and key a run uses, for every place a W&B user keeps them, with a temporary HOME.

Nothing here reads the real ~/.netrc or ~/.config/wandb: HOME, NETRC, WANDB_CONFIG_DIR and every WANDB_* variable
point into tmp_path. `wandb login` is the real CLI (a subprocess), run with `--no-verify` where no server is
needed and against the loopback W&B stand-in (`tests/wandb_standin`) where it verifies the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import wandb

from prefect_wandb.wandb.credentials import resolve_credentials
from tests.wandb_standin import API_KEY, Standin

KEY = "k" * 40
OTHER_KEY = "o" * 40


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # the workspace settings file (./wandb/settings) is under tmp_path too
    return h


def wandb_login(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "wandb", "login", *args], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    if check:
        assert out.returncode == 0, out.stderr
    return out


def default_host() -> str:
    return wandb.Settings().base_url.rstrip("/")


def test_no_credentials_is_offline_and_says_how_to_log_in(home):
    c = resolve_credentials()
    assert c.host == default_host() and c.host_source == "wandb's default host"
    assert not c.online and c.key_source is None
    assert "`wandb login`" in c.why() and "WANDB_API_KEY" in c.why()


def test_wandb_api_key_variable(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    c = resolve_credentials()
    assert c.online and c.key_source == "WANDB_API_KEY" and c.api_key == KEY
    assert KEY not in repr(c) and KEY not in str(c) and KEY not in c.why()  # never printed


def test_wandb_login_writes_netrc_for_wandbs_default_host(home):
    """The day-one user: `wandb login KEY` (real CLI) stores the key for wandb's default host, which is not
    api.wandb.ai in wandb 0.31; auto must be online with it."""
    wandb_login("--no-verify", KEY)
    netrc = (home / ".netrc").read_text()
    assert f"machine {urlsplit(default_host()).netloc}" in netrc
    c = resolve_credentials()
    assert c.online and c.api_key == KEY and c.host == default_host()
    assert c.key_source.startswith(f"netrc {home / '.netrc'}")


def test_netrc_for_api_wandb_ai_counts_for_the_default_host(home):
    """An older `wandb login` wrote `machine api.wandb.ai`; wandb 0.31 still uses it for its Forge default host."""
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    (home / ".netrc").chmod(0o600)
    c = resolve_credentials()
    assert c.online and c.api_key == KEY


def test_wandb_login_host_writes_host_port_netrc_and_settings_file(home):
    """`wandb login --host http://127.0.0.1:PORT` (real CLI, verifying the key against the loopback stand-in):
    netrc gets `machine 127.0.0.1:PORT`, the settings file gets base_url; both are found."""
    with Standin(api_key=API_KEY) as w:
        wandb_login("--host", w.url, API_KEY)
        assert "Viewer" in w.operations()  # the CLI really asked the server who the key belongs to
    netloc = urlsplit(w.url).netloc
    assert f"machine {netloc}" in (home / ".netrc").read_text()
    settings = home / ".config" / "wandb" / "settings"
    assert f"base_url = {w.url}" in settings.read_text()
    c = resolve_credentials()
    assert c.online and c.host == w.url and c.api_key == API_KEY
    assert c.host_source == f"settings file {settings}"
    assert c.key_source == f"netrc {home / '.netrc'} (machine {netloc})"


def test_bare_hostname_netrc_entry_is_not_the_key_for_host_port(home):
    """What the old hand-written lookup did (hostname only) is not what wandb does: no key for host:port."""
    (home / ".netrc").write_text(f"machine 127.0.0.1\n  login user\n  password {KEY}\n")
    (home / ".netrc").chmod(0o600)
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = http://127.0.0.1:8080\n")
    c = resolve_credentials()
    assert c.host == "http://127.0.0.1:8080" and not c.online
    assert "wandb login --host http://127.0.0.1:8080" in c.why()


def test_settings_file_api_key_under_wandb_config_dir(home, tmp_path, monkeypatch):
    cfg = tmp_path / "wandb-config"
    cfg.mkdir()
    (cfg / "settings").write_text(f"[default]\nbase_url = http://127.0.0.1:8081\napi_key = {KEY}\n")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(cfg))
    c = resolve_credentials()
    assert c.online and c.host == "http://127.0.0.1:8081" and c.api_key == KEY
    assert c.key_source == f"settings file {cfg / 'settings'} (api_key)"


@pytest.mark.slow
def test_wandb_base_url_overrides_the_settings_file(home, monkeypatch):
    wandb_login("--no-verify", "--host", "http://127.0.0.1:8082", KEY)
    wandb_login("--no-verify", "--host", "http://127.0.0.1:8083", OTHER_KEY)  # settings file now says 8083
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8082")
    c = resolve_credentials()
    assert c.host == "http://127.0.0.1:8082" and c.host_source == "WANDB_BASE_URL"
    assert c.api_key == KEY and c.online


def test_netrc_variable_names_the_file(home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "my-netrc"
    elsewhere.write_text(f"machine 127.0.0.1:8084\n  login user\n  password {KEY}\n")
    elsewhere.chmod(0o600)
    monkeypatch.setenv("NETRC", str(elsewhere))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8084")
    c = resolve_credentials()
    assert c.online and c.key_source == f"netrc {elsewhere} (machine 127.0.0.1:8084)"


def test_wandb_api_key_wins_over_netrc(home, monkeypatch):
    wandb_login("--no-verify", KEY)
    monkeypatch.setenv("WANDB_API_KEY", OTHER_KEY)
    c = resolve_credentials()
    assert c.api_key == OTHER_KEY and c.key_source == "WANDB_API_KEY"


def test_wandb_mode_offline_keeps_auto_offline_even_with_a_key(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    c = resolve_credentials()
    assert c.has_key and not c.online and "WANDB_MODE" in c.why()


def test_malformed_key_is_a_problem_not_a_crash(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "short")
    c = resolve_credentials()
    assert not c.online and "malformed" in c.why() and "short" not in c.why()
