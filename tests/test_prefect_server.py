"""A shared Prefect server behind basic auth (the README's recipe, `docs/prefect.md`): a real `prefect server start`
on loopback with PREFECT_SERVER_API_AUTH_STRING (`mnist_pipeline/cli/local_server.py`) refuses a client without the credentials
or with wrong ones (401), and answers one with them.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest


@pytest.mark.slow
def test_a_shared_server_behind_basic_auth_refuses_an_unauthenticated_client(tmp_path, monkeypatch, prefect_db):
    """A real `prefect server start` on loopback with PREFECT_SERVER_API_AUTH_STRING (the README's recipe)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from mnist_pipeline.cli.local_server import local_prefect_server
    from tests.helpers import seed_prefect_home

    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:s3cret-for-tests")
    with local_prefect_server(home=seed_prefect_home(tmp_path / "home", prefect_db)) as url:
        request = urllib.request.Request(f"{url}/deployments/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 401
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client, \
                pytest.raises(httpx.HTTPStatusError, match="401"):
            client.read_deployments()
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: "admin:s3cret-for-tests"}), \
                get_client(sync_client=True) as client:
            assert client.read_deployments() == []
        request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:wrong").decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 401

