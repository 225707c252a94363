"""Shared fixtures: tiny real-format MNIST IDX files, wandb offline in a temp dir, a real Prefect test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write_mnist

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A directory whose MNIST/raw holds four tiny, valid, uncompressed IDX files."""
    write_mnist(tmp_path / "src")
    return tmp_path / "src"


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "wandb"
    d.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(d))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return d


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
