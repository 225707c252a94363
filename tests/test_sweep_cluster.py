"""Sweeps on a real Dask cluster: a scheduler and two worker processes started by the test, on loopback."""

from __future__ import annotations

import os
import time

import pytest

from tests.dask_cluster import DaskCluster


@pytest.fixture
def dask_cluster(tmp_path):
    cluster = DaskCluster(tmp_path / "dask", n_workers=2, nthreads=1)
    try:
        yield cluster.start()
    finally:
        cluster.close()


def test_the_cluster_fixture_runs_separate_single_threaded_workers_that_can_be_lost(dask_cluster):
    from distributed import Client

    with Client(dask_cluster.address, timeout=10) as client:
        info = client.run(lambda: (os.getpid(), os.getcwd()))
        assert len(info) == 2 and len({pid for pid, _ in info.values()}) == 2
        assert {os.path.basename(cwd) for _, cwd in info.values()} == {"worker0", "worker1"}
        assert set(client.nthreads().values()) == {1}
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info)
        dask_cluster.kill_worker(0)
        deadline = time.monotonic() + 30
        while len(client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
