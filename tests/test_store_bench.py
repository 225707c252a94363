"""The store benchmark's smoke test (`benchmarks.store_bench --smoke`): 1 and 2 writer processes, about 1 s each, on
SQLite and on a throwaway PostgreSQL started the way the tests start theirs, twice (the medians), in-process. It checks that the
benchmark works and writes every figure, not the figures: the benchmark itself is run by hand (docs/performance.md)."""

from __future__ import annotations

import json

import pytest

from benchmarks import store_bench
from tests.servers import postgres_available


@pytest.mark.slow
def test_the_store_benchmark_writes_every_figure_for_both_stores_side_by_side(tmp_path, capsys):
    why = postgres_available()
    if why:
        pytest.skip(why)
    out = tmp_path / "store-bench.json"
    assert store_bench.main(["--smoke", "--repeats", "2", "--out", str(out), "--sqlite-dir", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["writers"] == [1, 2] and res["settings"]["writer"] == "process (fork)"
    assert res["settings"]["repeats"] == 2
    for store in store_bench.STORES:
        for n in ("1", "2"):
            cell = res["figures"][store][n]
            assert cell["commits"] > 0 and cell["commits_per_s"] > 0, (store, n, cell)
            assert cell["latency_ms_p50"] > 0 and cell["latency_ms_p95"] >= cell["latency_ms_p50"], (store, n)
            assert len(cell["per_writer"]) == int(n) and sum(cell["per_writer"]) == cell["commits"]
            assert len(cell["runs_commits_per_s"]) == 2 and cell["commits_per_s"] == min(cell["runs_commits_per_s"])
            assert len(res["runs"][store][n]) == 2
    assert set(res["ratios"]["postgresql_over_sqlite"]) == {"1", "2"}
    assert all(r > 0 for r in res["ratios"]["postgresql_over_sqlite"].values())
    assert res["postgresql"]["fresh_database_per_cell"] and "fsync" in res["postgresql"]["note"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["writers", "SQLite", "PostgreSQL", "PG/SQLite"]
    for n, line in zip(("1", "2"), lines[2:4], strict=True):  # the figures, latencies, per-writer spreads
        cells = [res["figures"][s][n] for s in store_bench.STORES]
        lat = [f"{c['latency_ms_p50']}/{c['latency_ms_p95']}" for c in cells]
        spread = [f"{c['per_writer'][0]}-{c['per_writer'][-1]}" for c in cells]
        assert line.split() == [n, *(str(c["commits_per_s"]) for c in cells),
                                str(res["ratios"]["postgresql_over_sqlite"][n]), f"{lat[0]},", lat[1],
                                f"{spread[0]},", spread[1]]
    assert any("fsync, synchronous_commit and full_page_writes off: not production figures" in ln for ln in lines)
