"""Which W&B host and key wandb would use, and why (`resolve_credentials`), and a stage's mode (`resolve_mode`).

wandb 0.31 resolves them in two steps; we ask wandb's own objects for each rather than reading netrc or settings
files by hand:
1. the host (`Settings.base_url`): WANDB_BASE_URL, else `base_url` in a settings file (the workspace file
   `<dir>/wandb/settings`, then the system file `$WANDB_CONFIG_DIR/settings` or `~/.config/wandb/settings`, which
   `wandb login --host URL` writes), else wandb's default host (`wandb.Settings().base_url`);
2. the key for that host (wandb's `_use_system_auth`, used by `wandb.init` and `wandb.Api`): WANDB_API_KEY (or
   WANDB_IDENTITY_TOKEN_FILE), else the netrc entry `machine <host[:port]>` ($NETRC, ~/.netrc, ~/_netrc; what
   `wandb login` writes), else `api_key` in a settings file when that file's host is this host.
The settings are loaded into a fresh `wandb.Settings` the way `wandb.setup` loads its own, not read from the
process-wide singleton (loaded once per process, kept even when the environment changes); `host` and `api_key`
are then handed explicitly to `wandb.init` and `wandb.Api`, so W&B is reached exactly where we said.
"""

from __future__ import annotations

import logging
import os
import pathlib
from dataclasses import dataclass, field

import wandb
from wandb.errors import AuthenticationError

# private wandb API: wandb has no public reader of its host URL rules, key format check or netrc entry; these are
# the objects `wandb login` and `wandb.init` themselves use, so we resolve exactly as they do. Only this module
# imports them.
from wandb.sdk.lib.wbauth import AuthApiKey, HostUrl, session_credentials
from wandb.sdk.lib.wbauth.validation import check_api_key
from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source

log = logging.getLogger(__name__)


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
    # private wandb API: `update_from_system_settings` / `update_from_env_vars` / `read_system_settings` are how
    # `wandb.setup` loads settings files and WANDB_* variables; there is no public call that loads them into a fresh
    # Settings rather than the process-wide singleton.
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


def key_to_pass(creds: WandbCredentials) -> str | None:
    """The API key to hand `wandb.init` explicitly, or None where wandb finds this very key itself: in its session
    credentials for the host when it has some, else in WANDB_API_KEY or the netrc entry (which it reads as
    `resolve_credentials` did). A key passed to every `wandb.init` makes wandb 0.31 print "Changing session
    credentials" at every stage after the first: it compares the new `AuthApiKey` with the session's by identity
    (the class has no `__eq__`). Passed: a key from a settings file (wandb reads its process-wide settings, loaded
    once), and a key other than the session's (the environment changed since)."""
    if not creds.api_key:
        return None
    session = session_credentials(host=creds.host)
    if session is not None:
        return None if isinstance(session, AuthApiKey) and session.api_key == creds.api_key else creds.api_key
    found_by_wandb = creds.key_source == "WANDB_API_KEY" or (creds.key_source or "").startswith("netrc ")
    return None if found_by_wandb else creds.api_key


def has_api_key() -> bool:
    """Whether wandb has an API key for its host."""
    return resolve_credentials().has_key


def resolve_mode(requested: str, root_dir: str | os.PathLike | None = None) -> str:
    """'auto' is online exactly when `wandb.init()` would be (`WandbCredentials.online`); else as requested."""
    if requested != "auto":
        return requested
    creds = resolve_credentials(root_dir)
    if not creds.online:
        log.debug("W&B: recording offline (`sync` uploads later): %s", creds.why())
    return "online" if creds.online else "offline"


def masked_line(e: BaseException, secret: str | None = None) -> str:
    """One line for an error out of W&B, with the API key (`secret`, and WANDB_API_KEY) masked."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    for s in {secret, os.environ.get("WANDB_API_KEY")}:
        if s:
            text = text.replace(s, "<API key>")  # an error that echoes the key must not put it in the logs
    return text[:500]


# What wandb (Python, or wandb-core's Go HTTP client, inside whatever error wraps it, even an AuthenticationError
# "Failed to verify credentials") says when the host cannot be reached, or did not answer, in the console's words.
_UNREACHABLE = (("connection refused", "connection refused"), ("no such host", "host not found"),
                ("name or service not known", "host not found"), ("connection reset", "connection reset"),
                ("network is unreachable", "network unreachable"), ("connecttimeout", "connection timed out"),
                ("failed to establish a new connection", "no connection"))
_NO_ANSWER = ("did not respond in time", "i/o timeout", "deadline exceeded", "timed out", "timeout")


def plain_line(e: BaseException, host: str | None, secret: str | None = None) -> str:
    """The console's words for an error out of W&B: "W&B at <host> is unreachable (connection refused)" when the
    host could not be reached, "W&B at <host> did not answer in time" when it stopped answering, whatever wandb
    wrapped that in; else `masked_line` (the full error stays in the lineage store's record of what W&B missed)."""
    text = masked_line(e, secret)
    low, at = text.lower(), f"W&B at {host}" if host else "W&B"
    cause = next((words for needle, words in _UNREACHABLE if needle in low), None)
    if cause is not None:
        return f"{at} is unreachable ({cause})"
    if any(needle in low for needle in _NO_ANSWER):
        return f"{at} did not answer in time"
    return text
