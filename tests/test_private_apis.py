"""The private APIs of Prefect and wandb that the code still uses (docs/private-apis.md): each one still has the
shape the code relies on, and the code uses no private module that the page does not list. A new wandb or Prefect
release that moves one of them fails here, by name, rather than somewhere inside a run."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "private-apis.md"
PRODUCTION = ("prefect_wandb", "mnist_pipeline", "flows", "tasks", "deployments", "benchmarks")
# modules of Prefect and wandb that their documentation does not present as public
PRIVATE = re.compile(r"\b(wandb\.(?:sdk|proto|util|old|apis\.internal)(?:\.\w+)*|"
                     r"prefect\.(?:server|_internal|utilities\.asyncutils)(?:\.\w+)*)")


def _private_uses() -> dict[str, list[str]]:
    uses: dict[str, list[str]] = {}
    for top in PRODUCTION:
        for f in sorted((REPO / top).rglob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for name in PRIVATE.findall(code):
                    uses.setdefault(name, []).append(f"{f.relative_to(REPO)}:{n}")
    return uses


def test_every_private_module_the_code_uses_is_listed_in_the_docs():
    doc = DOC.read_text()
    unlisted = {name: where for name, where in _private_uses().items() if f"`{name}" not in doc}
    assert not unlisted, f"private APIs used but not listed in {DOC.relative_to(REPO)}: {unlisted}"


def test_prefect_is_used_through_its_public_api_only():
    assert not [n for n in _private_uses() if n.startswith("prefect.")]


def test_wandb_credential_helpers_keep_their_shape():
    from wandb.errors import AuthenticationError  # noqa: F401 - raised by the netrc reader on a malformed key
    from wandb.sdk.lib.wbauth import AuthApiKey, HostUrl, session_credentials
    from wandb.sdk.lib.wbauth.validation import check_api_key
    from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source

    assert list(inspect.signature(read_netrc_auth_with_source).parameters) == ["host"]
    assert list(inspect.signature(session_credentials).parameters) == ["host"]
    assert list(inspect.signature(check_api_key).parameters) == ["key"]
    assert check_api_key("k" * 40) is None and "40" in (check_api_key("short") or "")
    host = HostUrl("https://api.wandb.ai/")
    assert host.url == "https://api.wandb.ai" and host.is_same_url("https://api.wandb.ai")
    key = AuthApiKey(host=host, api_key="k" * 40)
    assert key.api_key == "k" * 40


def test_wandb_netrc_reader_returns_the_key_and_its_source(tmp_path, monkeypatch):
    from wandb.sdk.lib.wbauth import AuthApiKey, HostUrl
    from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth_with_source

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.example.test\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    auth = read_netrc_auth_with_source(host=HostUrl("https://api.example.test"))
    assert auth is not None and isinstance(auth.auth, AuthApiKey)
    assert auth.auth.api_key == "k" * 40 and str(netrc) in str(auth.source)
    assert read_netrc_auth_with_source(host=HostUrl("https://other.example.test")) is None


def test_wandb_offline_record_type_keeps_its_shape():
    from wandb.proto import wandb_internal_pb2 as pb

    kinds = {f.name for f in pb.Record.DESCRIPTOR.oneofs_by_name["record_type"].fields}  # type: ignore[attr-defined]
    assert {"run", "exit", "artifact", "use_artifact", "final", "header"} <= kinds, sorted(kinds)


def test_wandb_settings_loaders_keep_their_shape():
    import wandb

    s = wandb.Settings()
    assert callable(s.update_from_system_settings) and callable(s.update_from_env_vars)
    fields = set(type(s).model_fields)
    for part in ("graphql", "file_stream", "file_transfer"):
        assert {f"x_{part}_retry_max", f"x_{part}_retry_wait_min_seconds",
                f"x_{part}_retry_wait_max_seconds"} <= fields, part
    assert {"x_graphql_timeout_seconds", "x_file_stream_timeout_seconds", "x_file_transfer_timeout_seconds"} <= fields
    assert {"x_disable_stats", "x_save_requirements"} <= fields  # settings.QUIET


def test_wandb_temporary_folders_keep_their_shape():
    import tempfile

    from wandb.sdk.artifacts.artifact import Artifact
    from wandb.sdk.data_types._private import MEDIA_TMP

    from prefect_wandb.leftovers import WANDB_TEMP
    from prefect_wandb.wandb.temp import temp_folders

    assert isinstance(MEDIA_TMP, tempfile.TemporaryDirectory) and isinstance(Artifact._TMP_DIR, tempfile.TemporaryDirectory)
    media, art = temp_folders()
    assert media.is_dir() and art.is_dir() and WANDB_TEMP.fullmatch(media.name) and WANDB_TEMP.fullmatch(art.name)


def test_wandb_run_is_finished_flag_exists():
    from wandb.sdk.wandb_run import Run

    assert Run.__annotations__.get("_is_finished") in (bool, "bool")
