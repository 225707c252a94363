"""Benchmark: a 4-trial sweep on a local Dask cluster of 1 worker vs 2 workers, side by side, same machine.

    python -m benchmarks.sweep_bench --data-dir ../shared/datasets/mnist-subset     # slice=1, 1 epoch, 4 trials
    python -m benchmarks.sweep_bench --smoke                                         # seconds: checks it works
    python -m benchmarks.sweep_bench --smoke --trials 2 --sizes 2                    # the suite's smoke test

Each configuration runs the real `mnist-sweep` flow (the default local cluster: N worker processes, each with
cores // N threads), wandb offline, against one Prefect server started beforehand, each with a fresh lineage store
and artifacts folder (nothing is reused). The 4 trials cost the same (learning rate x seed, same network), so the
comparison is one of scheduling, not of work (--trials 2: the two learning rates, seed 0 only). Per configuration:

  wall_s            the flow call: local cluster start, prepare-data, the trials, select, export, validate, promote
  trial_phase_s     first trial start to last trial end, on the workers' clocks
  trials_per_min    trials / trial_phase_s
  sum_train_s       the trials' own training loops (train_seconds), summed
  overhead_s        wall_s - sum_train_s / workers: everything beyond perfectly parallel training
With --repeats > 1 the two configurations alternate and the medians are reported. Results go to --out (JSON).
`--sizes 2` runs the 2-worker configuration alone (no scaling ratio): the suite's smoke test, where the 1-worker
sweep would add nothing that the 2-worker one does not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "mnist-subset"
SWEEP = {"name": "bench", "method": "grid", "metric": {"name": "test_accuracy", "goal": "maximize"},
         "parameters": {"train.learning_rate": {"values": [0.003, 0.005]}, "train.seed": {"values": [0, 1]}}}
TARGET_SCALING = 1.6
SMOKE_IMAGES = (96, 32)  # --smoke: synthetic train / test images
KEYS = ("wall_s", "trial_phase_s", "trials_per_min", "sum_train_s", "sum_trial_s", "overhead_s")


def _sweep(trials: int) -> dict:
    """The benchmark's grid: 4 trials, or 2 (its two learning rates, seed 0 only)."""
    seeds = SWEEP["parameters"]["train.seed"]["values"][: trials // 2]
    return {**SWEEP, "parameters": {**SWEEP["parameters"], "train.seed": {"values": seeds}}}


def _config(work: Path, a: argparse.Namespace):
    from mnist_pipeline.config import PipelineConfig

    data = ({"source": "synthetic", "synthetic_train": SMOKE_IMAGES[0], "synthetic_test": SMOKE_IMAGES[1], "slice": 1}
            if a.smoke else {"source": "local", "local_dir": str(a.data_dir), "slice": a.slice})
    # the smoke's stages do the least that still runs them: batches of 16, short ONNX timings, a 4-row table
    smoke = {"train": {"batch_size": 16, "watch": False},
             "onnx": {"latency_samples": 10, "throughput_batch": 16, "timing_seconds": 0.02},
             "evaluate": {"misclassified_table_rows": 4}} if a.smoke else {"onnx": {"latency_samples": 200}}
    return PipelineConfig.model_validate({
        **smoke, "data": {**data, "root": str(work / "data")}, "train": {**smoke.get("train", {}), "epochs": a.epochs},
        "wandb": {"mode": "offline", "dir": str(work / "wandb")},
        "artifacts_dir": str(work / "artifacts"), "lineage_db": str(work / "lineage.db")})


def run_once(workers: int, work: Path, a: argparse.Namespace) -> dict:
    from mnist_pipeline.flows.sweep import mnist_sweep, task_runner
    from mnist_pipeline.sweep import parse_sweep

    cfg = _config(work, a)
    t0 = time.perf_counter()
    sweep = parse_sweep(_sweep(a.trials))
    summary = mnist_sweep.with_options(task_runner=task_runner(None, workers))(config=cfg, sweep=sweep).to_dict()
    wall = time.perf_counter() - t0
    trials = summary["trials"]
    assert all(t["status"] == "finished" for t in trials), [t["error"] for t in trials]
    phase = max(t["ended"] for t in trials) - min(t["started"] for t in trials)
    sum_train = sum(t["train_seconds"] for t in trials)
    from mnist_pipeline.sweep import usable_cores

    return {"workers": workers, "threads_per_worker": max(1, usable_cores() // workers),
            "wall_s": round(wall, 2), "trial_phase_s": round(phase, 2),
            "trials_per_min": round(len(trials) / phase * 60, 2), "sum_train_s": round(sum_train, 2),
            "sum_trial_s": round(sum(t["seconds"] for t in trials), 2),
            "overhead_s": round(wall - sum_train / workers, 2),
            "winner_test_accuracy": summary["winner"]["test_accuracy"],
            "trials_on": sorted({str(t["worker"]) for t in trials})}


def summarize(runs: dict[int, list[dict]], settings: dict) -> dict:
    """The results document: per configuration the medians of its runs, and the scaling ratios where both sizes
    ran."""
    def med(workers: int, key: str) -> float:
        return round(statistics.median(x[key] for x in runs[workers]), 2)

    figures = {f"{w}_worker{'s' if w > 1 else ''}": {k: med(w, k) for k in KEYS} for w in sorted(runs)}
    ratios = ({"scaling_trials_per_min_2_over_1": round(med(2, "trials_per_min") / med(1, "trials_per_min"), 3),
               "scaling_wall_1_over_2": round(med(1, "wall_s") / med(2, "wall_s"), 3)} if set(runs) == {1, 2} else {})
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
            "settings": settings, "figures": figures, "runs": runs, "ratios": ratios,
            "target": {"scaling_trials_per_min_2_over_1": TARGET_SCALING}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--slice", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help=f"synthetic {SMOKE_IMAGES[0]}/{SMOKE_IMAGES[1]} images, "
                   "batches of 16, short ONNX timings: checks the benchmark works, in seconds")
    p.add_argument("--trials", type=int, choices=(2, 4), default=4,
                   help="trials per sweep: the 4 of the grid, or 2 (seed 0 only; still one per worker with 2 workers)")
    p.add_argument("--sizes", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                   help="the cluster sizes to run (default both, side by side: the scaling ratio needs both)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results-sweep.json")
    a = p.parse_args(argv)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import logging
    from contextlib import ExitStack

    from mnist_pipeline.cli.sweep import _prefect_api

    logging.getLogger("distributed").setLevel(logging.WARNING)
    sizes = sorted(set(a.sizes))
    runs: dict[int, list[dict]] = {w: [] for w in sizes}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        _prefect_api(stack)  # one Prefect server for every measured sweep, started before any timing
        for r in range(a.repeats):
            for workers in (sizes if r % 2 == 0 else sizes[::-1]):
                res = run_once(workers, Path(tmp) / f"r{r}-w{workers}", a)
                runs[workers].append(res)
                print(f"repeat {r} workers {workers}: {json.dumps(res)}", file=sys.stderr)

    result = summarize(runs, {"trials": a.trials, "slice": a.slice, "epochs": a.epochs, "repeats": a.repeats,
                              "smoke": a.smoke, "sweep": _sweep(a.trials)})
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    figures = result["figures"]
    print(f"{'':24}" + "".join(f"{k.replace('_', ' '):>12}" for k in figures))
    for k in KEYS:
        print(f"{k:24}" + "".join(f"{fig[k]:>12}" for fig in figures.values()))
    if result["ratios"]:
        print(f"ratio scaling (trials/min, 2 over 1): {result['ratios']['scaling_trials_per_min_2_over_1']} (target >= "
              f"{TARGET_SCALING}); wall 1 over 2: {result['ratios']['scaling_wall_1_over_2']}")
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
