"""Benchmark: the warm pipeline on PostgreSQL + S3 against the same pipeline on SQLite + a local folder.

    python -m benchmarks.team_bench --data-dir ../shared/datasets/mnist-subset        # slice=1, epochs=5, 3 repeats
    python -m benchmarks.team_bench --smoke                                            # seconds: checks it works

One Prefect server, a throwaway PostgreSQL 15 and a SeaweedFS S3 server (`tests/servers.py`, as the tests start
them) are started once; then, alternately, `benchmarks.bench`'s `pipeline` part (the whole flow in a fresh process,
timed around the flow call, wandb offline) runs on a fresh SQLite file + local artifacts folder, and on a fresh
PostgreSQL database + S3 prefix (the password from PGPASSWORD, the keys from the AWS variables, the S3 versions'
local cache empty: every upload and read-back is in the figure). Printed: the medians, the ratio PostgreSQL + S3 /
SQLite + local (the target is at most 1.1) and the stage times of each; JSON to --out.

The test PostgreSQL runs with fsync off and the S3 server on loopback: the figure is the pipeline's own cost of a
shared store and object storage, not a network's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.bench import DEFAULT_DATA, REPO, run_part

TARGET = 1.1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.team_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="directory with the four MNIST IDX files")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--slice", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic-sized run: checks that every part works")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results-team.json")
    args = p.parse_args(argv)
    from mnist_pipeline.cli.local_server import local_prefect_server
    from prefect_wandb import StoreURL
    from tests.servers import postgres_server, s3_server

    if args.smoke:
        args.epochs, args.slice, args.repeats = 1, 50, 1
    with tempfile.TemporaryDirectory(prefix="team-bench-") as t, postgres_server() as pg, s3_server() as s3, \
            local_prefect_server(home=Path(t) / "prefect-home") as api:
        tmp = Path(t)
        bucket = s3.bucket("team-bench")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_"))},
               "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **s3.env(),
               "PGPASSWORD": pg.password, "PREFECT_WANDB_ARTIFACTS_CACHE": str(tmp / "cache"),
               "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
        logs = tmp / "logs"
        logs.mkdir()
        reps: list[dict] = []
        for i in range(args.repeats):
            rep = {}
            for where in ("local", "team"):
                work = tmp / f"{where}-{i}"
                a = {"data_dir": str(args.data_dir), "slice": args.slice, "epochs": args.epochs, "seed": 0,
                     "watch_log_freq": 10, "latency_samples": 50, "exporter": "torchscript", "work": str(work),
                     "wandb_dir": str(work / "wandb"), "repeat": f"{where}-{i}"}
                (work / "wandb").mkdir(parents=True)
                if where == "team":  # a fresh database and prefix: a full run, never a skip
                    a["lineage_db"] = StoreURL(pg.new_database()).without_password()  # password: PGPASSWORD
                    a["artifacts_dir"] = f"{bucket}/run-{i}"
                res = run_part("pipeline", a, env, logs)
                if res.get("status") != "completed":
                    raise RuntimeError(f"the {where} pipeline ended {res.get('status')!r}; see {logs}")
                rep[where] = res
            rep["ratio"] = rep["team"]["wall_s"] / rep["local"]["wall_s"]
            reps.append(rep)
            print(f"repeat {i}: SQLite + local {rep['local']['wall_s']:.2f} s, PostgreSQL + S3 "
                  f"{rep['team']['wall_s']:.2f} s, ratio {rep['ratio']:.3f}", flush=True)
    med = {w: statistics.median(r[w]["wall_s"] for r in reps) for w in ("local", "team")}
    ratio = statistics.median(r["ratio"] for r in reps)
    stages = {w: {s: round(statistics.median(r[w]["stages_s"].get(s, 0.0) for r in reps), 3)
                  for s in reps[0][w]["stages_s"]} for w in ("local", "team")}
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load": os.getloadavg(),
              "settings": {"epochs": args.epochs, "slice": args.slice, "repeats": args.repeats, "smoke": args.smoke},
              "wall_s": med, "ratio_team_over_local": ratio, "target": TARGET, "stages_s": stages, "repeats": reps}
    print(f"\nwarm pipeline, median of {args.repeats}: SQLite + local {med['local']:.2f} s, PostgreSQL + S3 "
          f"{med['team']:.2f} s")
    print(f"ratio PostgreSQL + S3 / SQLite + local: {ratio:.3f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'NOT met'})")
    print("stage seconds (local / team): " + ", ".join(
        f"{s} {stages['local'][s]:.2f}/{stages['team'].get(s, 0):.2f}" for s in stages["local"]))
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
