"""The benchmarks' smoke tests: every part of `benchmarks.bench` and of `benchmarks.sweep_bench` runs on tiny data,
in-process and in seconds, and what they hand on (the RESULT line, the summary, the report, the GPU check's
table) holds every figure. They check that the benchmarks work, not the figures: the benchmarks themselves are run
by hand (docs/performance.md), never by the suite."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import bench, gpu_summary
from tests.helpers import write_mnist


def _result(part: str, a: dict, capsys) -> dict:
    """One part through the benchmark's child protocol (`child_main` prints `RESULT {json}`), in this process."""
    bench.child_main(part, json.dumps(a))
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_every_part_of_the_benchmark_runs_and_the_gpu_check_prints_its_table(prefect_server, wandb_offline,
                                                                              tmp_path, capsys):
    raw = write_mnist(tmp_path / "mnist", n_train=200, n_test=60)
    bench.stage_for_tutorial(raw, tmp_path / "tutorial-data")
    work = tmp_path / "rep0"
    (work / "wandb").mkdir(parents=True)
    a = {"data_dir": str(raw), "epochs": 1, "slice": 1, "seed": 0, "staged_root": str(tmp_path / "tutorial-data"),
         "watch_log_freq": 10, "exporter": "torchscript", "device": "cpu", "cold_slice": 1, "latency_samples": 10,
         "timing_seconds": 0.02, "repeat": 0, "work": str(work), "wandb_dir": str(work / "wandb")}
    rep = {part: _result(part, a, capsys) for part in ("tutorial", "pipeline", "loop")}
    for part, fig in rep.items():
        assert fig["wall_s"] > 0 and fig["peak_rss_mib"] > 100 and 0 <= fig["test_accuracy"] <= 1, part
        assert fig["examples"] == 200, part  # one epoch of every image: the same work in each part
    assert rep["pipeline"]["status"] == "completed" and set(rep["pipeline"]["stages_s"]) >= {"train", "evaluate"}
    p = rep["pipeline"]
    rep["onnx"] = _result("onnx", {**a, "onnx_path": p["onnx_path"], "model_path": p["model_path"],
                                   "test_path": p["test_path"], "batch": 32}, capsys)
    assert rep["onnx"]["ort_throughput"] > 0 and rep["onnx"]["ort_p50_ms"] > 0 and rep["onnx"]["batch"] == 32
    rerun = _result("rerun", a, capsys)
    assert rerun["status"] == "skipped"  # unchanged data and config: the cheap path

    settings = {"slice": 1, "epochs": 1}
    res = bench.summarize([rep], rep["onnx"], rerun, settings)
    res.update(machine="this machine", settings=settings)
    assert res["device"] == "cpu" and set(res["ratios"]) >= {
        "pipeline_wall_over_tutorial_wall", "orchestration_overhead_share", "onnxruntime_throughput_over_torch",
        "rerun_wall_over_full_wall"}
    assert res["ratios"]["rerun_wall_over_full_wall"] == pytest.approx(rerun["wall_s"] / p["wall_s"])
    bench.print_report(res)
    report = capsys.readouterr().out
    assert "ratio pipeline_wall_over_tutorial_wall" in report and "target CPU: overhead share <= 20%" in report

    # the GPU check's last step reads what its first two wrote
    out = tmp_path / "out"
    out.mkdir()
    (out / "readme-run.json").write_text(json.dumps({"status": p["status"], "test_accuracy": p["test_accuracy"]}))
    (out / "readme-run.wall").write_text("12.34\n")
    (out / "results-cpu.json").write_text(json.dumps(res))
    assert gpu_summary.main([str(out), "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "gpu_check on cpu: this machine"
    assert any(x.split() == ["README", "command,", "cold", "(s)", "12.34"] for x in table)
    assert any(x.strip().startswith("CPU: overhead share <= 20%") for x in table)
    assert any(x.strip().startswith("rerun_wall_over_full_wall") for x in table)


def test_a_whole_process_is_timed_with_its_exit_status_and_summary(tmp_path):
    """The cold side-by-side's timer: wall from spawn to exit, peak RSS from wait4, the CLI's JSON status."""
    code = "import json; x = bytearray(64 << 20); print('log line'); print(json.dumps({'status': 'skipped'}))"
    got = bench.run_whole([sys.executable, "-c", code], tmp_path, {}, tmp_path / "ok.log")
    assert got["status"] == "skipped" and got["wall_s"] > 0 and got["peak_rss_mib"] >= 64
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\); see .*bad.log"):
        bench.run_whole([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {}, tmp_path / "bad.log")


def test_the_cold_ratios_are_medians_of_ratios_within_a_repeat():
    colds = [{"tutorial": {"wall_s": 10.0, "peak_rss_mib": 500}, "cli": {"wall_s": 15.0, "status": "completed"},
              "rerun": {"wall_s": 2.0, "status": "skipped"}, "first": {"wall_s": 30.0, "status": "completed"}},
             {"tutorial": {"wall_s": 20.0, "peak_rss_mib": 700}, "cli": {"wall_s": 20.0, "status": "completed"},
              "rerun": {"wall_s": 3.0, "status": "skipped"}, "first": {"wall_s": 50.0, "status": "completed"}},
             {"tutorial": {"wall_s": 12.0, "peak_rss_mib": 600}, "cli": {"wall_s": 24.0, "status": "completed"},
              "rerun": {"wall_s": 1.2, "status": "skipped"}, "first": {"wall_s": 36.0, "status": "completed"}}]
    got = bench.summarize_cold(colds)
    assert got["tutorial"]["wall_s"] == 12.0 and got["tutorial"]["peak_rss_mib"] == 600
    assert got["cli"]["status"] == "completed" and got["rerun"]["status"] == "skipped"
    # within a repeat first: 1.5, 1.0, 2.0 -> 1.5 (the ratio of the medians would be 20 / 12)
    assert got["ratios"]["cold_cli_over_cold_tutorial"] == 1.5
    assert got["ratios"]["cold_rerun_over_cold_tutorial"] == pytest.approx(0.15)
    assert got["ratios"]["first_run_cli_over_cold_tutorial"] == 3.0


@pytest.mark.slow
def test_the_sweep_benchmark_runs_a_sweep_on_a_two_worker_cluster_and_writes_its_figures(prefect_server, tmp_path,
                                                                                         capsys):
    """The 2-worker configuration on tiny data (the 1-worker one runs the same code with one worker: its figures
    and the ratios are the summary's, below)."""
    from benchmarks import sweep_bench

    out = tmp_path / "sweep-bench.json"
    assert sweep_bench.main(["--smoke", "--trials", "2", "--sizes", "2", "--out", str(out)]) == 0  # a trial a worker
    res = json.loads(out.read_text())
    fig = res["figures"]["2_workers"]
    assert fig["wall_s"] > fig["trial_phase_s"] > 0 and fig["trials_per_min"] > 0 and fig["sum_train_s"] > 0
    assert set(res["figures"]) == {"2_workers"} and res["ratios"] == {}
    [run] = res["runs"]["2"]
    assert run["trials_on"] == ["0", "1"] and run["threads_per_worker"] >= 1 and run["winner_test_accuracy"] >= 0
    assert "2 workers" in capsys.readouterr().out


def test_the_sweep_benchmark_reports_medians_per_cluster_size_and_the_scaling_ratios():
    from benchmarks import sweep_bench

    def run(workers: int, wall: float, per_min: float) -> dict:
        return {"workers": workers, "wall_s": wall, "trial_phase_s": wall - 2, "trials_per_min": per_min,
                "sum_train_s": 4.0, "sum_trial_s": 6.0, "overhead_s": wall - 4.0 / workers}

    runs = {1: [run(1, 30.0, 8.0), run(1, 20.0, 12.0), run(1, 40.0, 6.0)],
            2: [run(2, 15.0, 16.0), run(2, 12.0, 24.0), run(2, 50.0, 3.0)]}
    got = sweep_bench.summarize(runs, {"trials": 4})
    assert got["figures"]["1_worker"]["wall_s"] == 30.0 and got["figures"]["2_workers"]["trials_per_min"] == 16.0
    assert got["ratios"] == {"scaling_trials_per_min_2_over_1": 2.0, "scaling_wall_1_over_2": 2.0}
    assert got["settings"] == {"trials": 4} and got["runs"] is runs
    assert sweep_bench.summarize({2: runs[2]}, {})["ratios"] == {}
