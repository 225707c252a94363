"""The benchmark in its reduced mode: every part runs (tutorial reference, flow, loop, onnx, rerun) and the JSON
holds the figures and ratios. It checks that the benchmark works, not the figures (those are in the README)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import write_mnist

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_writes_every_figure(tmp_path):
    data = tmp_path / "mnist"
    write_mnist(data, n_train=600, n_test=200, gz=True)
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--smoke", "--data-dir", str(data / "MNIST" / "raw"),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    for part in ("tutorial", "pipeline", "loop"):
        fig = res["figures"][part]
        assert fig["wall_s"] > 0 and fig["peak_rss_mib"] > 100 and 0 <= fig["test_accuracy"] <= 1
    assert res["rerun"]["status"] == "skipped"  # unchanged data and config: the cheap path
    assert res["onnx"]["ort_throughput"] > 0 and res["onnx"]["ort_p50_ms"] > 0
    assert set(res["ratios"]) >= {"pipeline_wall_over_tutorial_wall", "orchestration_overhead_share",
                                  "onnxruntime_throughput_over_torch", "rerun_wall_over_full_wall"}
    assert "target" in r.stdout and "ratio pipeline_wall_over_tutorial_wall" in r.stdout
