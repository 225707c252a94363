"""The sweep benchmark in its reduced mode (synthetic data): both configurations run and every figure is written.
It checks that the benchmark works, not the figures (those are in the README)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sweep_benchmark_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "sweep-bench.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.sweep_bench", "--smoke", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("1_worker", "2_workers"):
        fig = res["figures"][key]
        assert fig["wall_s"] > fig["trial_phase_s"] > 0 and fig["trials_per_min"] > 0 and fig["sum_train_s"] > 0
    assert res["runs"]["1"][0]["trials_on"] == ["0"] and res["runs"]["2"][0]["trials_on"] == ["0", "1"]
    assert res["runs"]["1"][0]["threads_per_worker"] >= 1
    assert res["ratios"]["scaling_trials_per_min_2_over_1"] > 0
    assert "ratio scaling (trials/min, 2 over 1)" in r.stdout
