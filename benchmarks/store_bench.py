"""Benchmark: lineage store commits per second from 1, 4 and 16 concurrent writers, SQLite and PostgreSQL side by
side, same machine, same run (issue 29).

    python -m benchmarks.store_bench                        # 5 s per cell, writers 1,4,16, a throwaway PostgreSQL
    python -m benchmarks.store_bench --seconds 10 --writers 1,2,8 --pg-url postgresql+psycopg://u@host:5432/db
    python -m benchmarks.store_bench --seconds 5 --repeats 3  # each cell 3 times, interleaved: medians
    python -m benchmarks.store_bench --smoke                # 1 and 2 writers, about 1 s each: checks it works

One commit is what a stage records through the public `LineageStore` API: `start_run`, then `finish_run` producing
one small artifact (a new version of one shared name, one file), two write transactions, each holding the store's
write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: the advisory lock). Each writer is its own process (forked, as
Prefect's process workers are separate processes: SQLite's file lock and PostgreSQL's connections are then per
process, as in production), opens the store once, waits for the others at a barrier, then commits in a loop for
--seconds; commits/s is the commits completed by all writers in that window over its length. Each cell starts
with a fresh store: a new SQLite file (in --sqlite-dir, default the temporary folder), a new database on the
throwaway server. With --pg-url every cell writes into that one database (give a throwaway one: it is not
cleaned; runs are named store-bench-*), so later cells find the earlier cells' rows. With --repeats N every cell
is measured N times, the repeats interleaved (each repeat runs every writer count on both stores, back to back,
the order of the two stores alternating): a cell's figures are those of its median run, a ratio is the median of
the ratios within each repeat (both stores measured a few seconds apart, under the same load).

Without --pg-url the benchmark starts a throwaway PostgreSQL the way the tests do (`tests/servers.py`: initdb in a
temporary folder, loopback only, and **fsync, synchronous_commit and full_page_writes off**), so its figures are
not production figures; the SQLite store keeps its own durability (WAL, `synchronous` at its default: the WAL is
synced at every commit), which makes the comparison lean towards PostgreSQL. The output says which. Results go to
--out (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results-store.json"
STORES = ("sqlite", "postgresql")
UNIT = "stage commits/s"  # start_run + finish_run of one small artifact: two write transactions


def _writer(location: str, writer: int, seconds: float, barrier, results) -> None:
    """One writer process: open the store, wait for the others, commit for `seconds`; put (count, latencies)."""
    try:
        from prefect_wandb.store import FileRecord, LineageStore, NewArtifact

        store = LineageStore(location)
        pid = os.getpid()
        barrier.wait(timeout=120)
        latencies: list[float] = []
        t0 = time.monotonic()
        end = t0 + seconds
        n = 0
        while True:
            started = time.monotonic()
            if started >= end:
                break
            run_id = f"store-bench-{pid}-{writer}-{n}"
            digest = hashlib.sha256(run_id.encode()).hexdigest()
            store.start_run(run_id, "train", config={"writer": writer, "n": n}, env={"process": {"pid": pid}},
                            flow_run_id=f"store-bench-{pid}", run_group=None, wandb_mode="offline", wandb_dir=None,
                            wandb_project=None, wandb_entity=None)
            art = NewArtifact("store-bench-model", "model", digest, f"/artifacts/model/store-bench-model/{digest[:16]}",
                              {"writer": writer}, (FileRecord("model.pt", digest, 1234),))
            store.finish_run(run_id, used=[], produced=[art], summary={"loss": 0.1}, wandb_url=None,
                             wandb_mode="offline")
            done = time.monotonic()
            if done <= end:  # a commit still in flight at the end is not counted
                n += 1
                latencies.append(done - started)
            else:
                break
        results.put({"writer": writer, "commits": n, "latencies": latencies})
    except BaseException as e:  # the parent reports it
        results.put({"writer": writer, "error": f"{type(e).__name__}: {e}"})
        raise


def run_cell(location: str, writers: int, seconds: float) -> dict:
    """`writers` forked writer processes on the store at `location` for `seconds`: commits/s and latencies."""
    from prefect_wandb.store import LineageStore

    LineageStore(location)  # the schema made once, before any writer starts (not timed)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers)
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(location, w, seconds, barrier, results)) for w in range(writers)]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=seconds + 180))
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    errors = [g["error"] for g in got if "error" in g]
    if errors:
        raise RuntimeError(f"{len(errors)} of {writers} writers failed: {errors[0]}")
    latencies = sorted(x for g in got for x in g["latencies"])
    commits = sum(g["commits"] for g in got)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None

    return {"writers": writers, "seconds": seconds, "commits": commits,
            "commits_per_s": round(commits / seconds, 2),
            "per_writer": sorted(g["commits"] for g in got),
            "latency_ms_p50": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "latency_ms_p95": pct(0.95)}


def _fs_type(path: Path) -> str:
    """The file system the path is on (/proc/mounts: the longest mount point above it)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


@contextlib.contextmanager
def _postgres(pg_url: str | None) -> Iterator[tuple[object, dict]]:
    """A way to get a fresh database per cell (a callable giving a URL), and what to say about the server."""
    if pg_url:
        yield (lambda: pg_url), {"server": "given (--pg-url)", "fresh_database_per_cell": False,
                                 "note": "every cell writes into the given database"}
        return
    sys.path.insert(0, str(REPO))
    from tests.servers import postgres_available, postgres_server

    why = postgres_available()
    if why:
        raise SystemExit(f"store_bench: no PostgreSQL to start ({why}); give --pg-url")
    with postgres_server() as pg:
        yield pg.new_database, {
            "server": f"throwaway (tests/servers.py): {pg.version().split(',')[0]}", "fresh_database_per_cell": True,
            "note": "fsync, synchronous_commit and full_page_writes off: not production figures"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--writers", default="1,4,16", help="writer process counts, comma-separated (default 1,4,16)")
    p.add_argument("--pg-url", help="a PostgreSQL database to write into (default: start a throwaway server)")
    p.add_argument("--sqlite-dir", type=Path, help="where the SQLite stores go (default: the temporary folder)")
    p.add_argument("--repeats", type=int, default=1, help="measure every cell this many times (medians)")
    p.add_argument("--smoke", action="store_true", help="1 and 2 writers, 1 s each: checks it works, in seconds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    counts = [1, 2] if a.smoke else [int(x) for x in a.writers.split(",") if x.strip()]
    seconds = 1.0 if a.smoke else a.seconds
    if not counts or min(counts) < 1 or seconds <= 0 or a.repeats < 1:
        p.error("--writers: positive counts; --seconds, --repeats: positive")

    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict]]] = {s: {str(n): [] for n in counts} for s in STORES}
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=a.sqlite_dir) as tmp, \
            _postgres(a.pg_url) as (new_database, pg_info):
        for r in range(a.repeats):
            for n in counts:  # side by side: both stores at one writer count, then the next count
                for store in (STORES if r % 2 == 0 else STORES[::-1]):
                    location = (str(Path(tmp) / f"r{r}-w{n}.db") if store == "sqlite"
                                else new_database())  # type: ignore[operator]
                    cell = run_cell(location, n, seconds)
                    runs[store][str(n)].append(cell)
                    print(f"repeat {r} {store} {n} writer(s): {json.dumps(cell)}", file=sys.stderr)
        sqlite_fs = _fs_type(Path(tmp))
    load_after = os.getloadavg()

    def median_run(store: str, n: str) -> dict:
        by_rate = sorted(runs[store][n], key=lambda c: c["commits_per_s"])
        return {**by_rate[(len(by_rate) - 1) // 2], "runs_commits_per_s": [c["commits_per_s"] for c in runs[store][n]]}

    cells = {store: {str(n): median_run(store, str(n)) for n in counts} for store in STORES}
    ratios = {str(n): round(statistics.median(g["commits_per_s"] / s["commits_per_s"] for s, g in zip(
        runs["sqlite"][str(n)], runs["postgresql"][str(n)], strict=True)), 3)
        for n in counts if all(s["commits_per_s"] > 0 for s in runs["sqlite"][str(n)])}
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                          "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in load_after]},
              "settings": {"seconds": seconds, "writers": counts, "repeats": a.repeats, "smoke": a.smoke,
                           "writer": "process (fork)",
                           "commit": "start_run + finish_run of one small artifact (2 write transactions)"},
              "sqlite": {"file_system": sqlite_fs, "durability": "WAL, synchronous at its default (synced commits)"},
              "postgresql": pg_info, "unit": UNIT, "figures": cells, "runs": runs,
              "ratios": {"postgresql_over_sqlite": ratios}}
    a.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"lineage store, {UNIT} (one commit = start_run + finish_run of one small artifact), "
          f"{seconds:g} s per cell, writers are processes" + (f", medians of {a.repeats} repeats" if a.repeats > 1
                                                               else ""))
    print(f"{'writers':>8}{'SQLite':>10}{'PostgreSQL':>12}{'PG/SQLite':>11}   latency ms p50/p95: SQLite, PostgreSQL"
          "   commits per writer, fewest-most: SQLite, PostgreSQL")
    for n in counts:
        s, g = cells["sqlite"][str(n)], cells["postgresql"][str(n)]
        print(f"{n:>8}{s['commits_per_s']:>10}{g['commits_per_s']:>12}{ratios.get(str(n), float('nan')):>11}"
              f"   {s['latency_ms_p50']}/{s['latency_ms_p95']}, {g['latency_ms_p50']}/{g['latency_ms_p95']}"
              f"   {s['per_writer'][0]}-{s['per_writer'][-1]}, {g['per_writer'][0]}-{g['per_writer'][-1]}")
    print(f"SQLite: a fresh file per cell on {sqlite_fs}, {result['sqlite']['durability']}")
    print(f"PostgreSQL: {pg_info['server']}; {pg_info['note']}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
