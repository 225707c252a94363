"""Benchmark: the whole pipeline against the W&B tutorial's own loop, on the same data, epochs, seed and machine.

    python -m benchmarks.bench --data-dir ../shared/datasets/mnist-subset            # full: slice=1, epochs=5, 3 repeats
    python -m benchmarks.bench --data-dir ../shared/datasets/mnist-subset --slice 5  # the tutorial defaults
    python -m benchmarks.bench --smoke                                              # seconds: checks it works

Each measured part runs in its own fresh Python process (so its peak RSS is its own), one after the other:
  tutorial   benchmarks/tutorial_reference.py: DataLoader + ToTensor, num_workers=2, wandb.watch, test pass
  pipeline   the full flow (five tasks, Prefect, wandb offline, lineage store), timed around the flow call,
             against a Prefect server started once beforehand (as a scheduled deployment finds one running)
  loop       the pipeline's own training loop alone, no Prefect, no W&B (the floor of our approach)
  onnx       onnxruntime vs torch eager on the test split: batch-1 p50/p99 latency, batch-N throughput
  rerun      the flow again with unchanged data and config against the same lineage store
  cold       as a user meets them, each a whole process from a fresh folder, no Prefect server running, Prefect's
             database created but nothing run yet: the tutorial's script (`python benchmarks/tutorial_reference.py`),
             the README's `mnist-pipeline run --source local ...`, then that command again unchanged (skipped), all
             on the same data, slice, epochs and seed; and the README command as the first run on a fresh machine
             (a fresh PREFECT_HOME: Prefect creates its database on the way), reported beside the targets
Figures are medians over the repeats; ratios are taken within a repeat, then the median. Repeat i trains every part
with seed --seed + i (side by side within a repeat), so the test accuracies compared are medians over as many seeds
as repeats: one seed's data order moves an accuracy by about as much as the two loops differ. Results go to --out
as JSON, so later runs can be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "mnist-subset"
TUTORIAL = dict(epochs=5, classes=10, kernels=[16, 32], batch_size=128, learning_rate=0.005, dataset="MNIST",
                architecture="CNN")


def _rss_mib() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": round(own, 1), "children_peak_rss_mib": round(kids, 1)}


# ------------------------------------------------------------------------------------------------ parts


def part_tutorial(a: dict) -> dict:
    from benchmarks import tutorial_reference as ref

    cfg = {**TUTORIAL, "epochs": a["epochs"], "slice": a["slice"]}
    t0 = time.perf_counter()
    _model, accuracy, examples, train_s = ref.model_pipeline(cfg, a["staged_root"], a["seed"], a["wandb_dir"])
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_s": train_s, "test_accuracy": accuracy, "examples": examples,
            "samples_per_s": examples / wall}


def _pipeline_config(a: dict):
    from mnist_pipeline.config import PipelineConfig

    return PipelineConfig.model_validate({
        "data": {"source": "local", "local_dir": a["data_dir"], "slice": a["slice"], "root": a["work"] + "/data"},
        "train": {"epochs": a["epochs"], "seed": a["seed"], "watch_log_freq": a["watch_log_freq"],
                  "device": a.get("device", "auto")},
        "wandb": {"mode": "offline", "dir": a["wandb_dir"]},
        "onnx": {"latency_samples": a["latency_samples"], "exporter": a["exporter"]},
        "artifacts_dir": a.get("artifacts_dir") or a["work"] + "/artifacts",
        "lineage_db": a.get("lineage_db") or a["work"] + "/lineage.db"})


def part_pipeline(a: dict) -> dict:
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline
    from mnist_pipeline.tasks import import_stage_modules
    from prefect_wandb import LineageStore

    # The stages import torch, wandb, onnx... when they run (a skipped run needs none of them). Imported here,
    # outside the timer, as the tutorial's script imports its own before its timed part; wandb's service start and
    # first-run imports stay inside, as in the tutorial's timed wandb.init.
    import_stage_modules()

    cfg = _pipeline_config(a)
    t0 = time.perf_counter()
    summary = mnist_lineage_pipeline(config=cfg).to_dict()  # the JSON `mnist-pipeline run` prints
    wall = time.perf_counter() - t0
    store = LineageStore(cfg.resolved().lineage_db)
    out = {"wall_s": wall, "status": summary.get("status"), "test_accuracy": summary.get("test_accuracy"),
           "onnx_max_abs_diff": summary.get("onnx_max_abs_diff"), "stages_s": {}}
    model = summary.get("artifacts", {}).get("model")
    if model:
        meta = store.find_artifact("convnet", model["digest"]).metadata
        [trainer] = [r for r in store.runs() if r.job_type == "train" and r.status == "finished"
                     and any(a.digest == model["digest"] for a in store.edges(r.run_id).produced)][-1:]
        out["train_s"] = trainer.summary["train_seconds"]  # a timing: the run's record, not the model's
        out["examples"] = meta["examples_seen"]
        out["samples_per_s"] = meta["examples_seen"] / wall
        out["onnx_path"] = summary["artifacts"]["onnx"]["path"] + "/model.onnx"
        out["model_path"] = model["path"] + "/model.pt"
        out["test_path"] = summary["artifacts"]["dataset"]["path"] + "/test.pt"
    for run in store.runs():
        if run.finished_at and run.flow_run_id == store.runs()[-1].flow_run_id:
            start = datetime.fromisoformat(run.started_at)
            out["stages_s"][run.job_type] = (datetime.fromisoformat(run.finished_at) - start).total_seconds()
    return out


def part_loop(a: dict) -> dict:
    import torch

    from mnist_pipeline import data, training
    from mnist_pipeline.metrics import evaluate
    from mnist_pipeline.model import ConvNet, ModelConfig, pick_device

    prepared = data.prepare("local", Path(a["work"]) / "loop-data", local_dir=Path(a["data_dir"]),
                            slice_step=a["slice"])
    training.seed_everything(a["seed"])
    training.set_threads(0)
    model = ConvNet(ModelConfig())
    settings = training.LoopSettings(epochs=a["epochs"], seed=a["seed"], progress=False)
    device = pick_device(a.get("device", "auto"))
    result = training.train(model, prepared.train, settings, device)
    accuracy = evaluate(model, prepared.test, 10, device=device).accuracy  # the test split moves batch by batch
    del torch
    return {"wall_s": result.seconds, "train_s": result.seconds, "test_accuracy": accuracy,
            "examples": result.examples_seen, "samples_per_s": result.examples_seen / result.seconds}


def part_onnx(a: dict) -> dict:
    import torch

    from mnist_pipeline import onnx_io
    from mnist_pipeline.data import load_split, to_float
    from mnist_pipeline.model import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    test = load_split(Path(a["test_path"]))
    model = load_model(a["model_path"])
    sess = onnx_io.session(Path(a["onnx_path"]))
    name = sess.get_inputs()[0].name
    n = a["latency_samples"]
    singles = to_float(test.images[:n])
    big = to_float(test.images[: a["batch"]])
    out = {"batch": len(big), "latency_samples": n}
    out["ort_p50_ms"], out["ort_p99_ms"] = onnx_io.latency(
        lambda i: sess.run(None, {name: singles[i % len(singles)][None].numpy()}), n)
    with torch.inference_mode():
        out["torch_p50_ms"], out["torch_p99_ms"] = onnx_io.latency(lambda i: model(singles[i % len(singles)][None]), n)
        out["torch_throughput"] = onnx_io.throughput(lambda b: model(b), big, min_seconds=a["timing_seconds"])
        # the same model in the channels_last layout the pipeline itself evaluates in (faster on CPU)
        cl, big_cl = model.to(memory_format=torch.channels_last), big.contiguous(memory_format=torch.channels_last)
        out["torch_channels_last_throughput"] = onnx_io.throughput(lambda b: cl(b), big_cl,
                                                                   min_seconds=a["timing_seconds"])
    big_np = big.numpy()
    out["ort_throughput"] = onnx_io.throughput(lambda b: sess.run(None, {name: big_np}), big,
                                               min_seconds=a["timing_seconds"])
    out["throughput_ratio"] = out["ort_throughput"] / out["torch_throughput"]
    return out


PARTS = {"tutorial": part_tutorial, "pipeline": part_pipeline, "loop": part_loop, "onnx": part_onnx,
         "rerun": part_pipeline}


def child_main(part: str, args_json: str) -> None:
    a = json.loads(args_json)
    result = PARTS[part](a)
    result.update(_rss_mib())
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ driver


def run_part(part: str, a: dict, env: dict, log_dir: Path) -> dict:
    log = log_dir / f"{part}-{a.get('repeat', 0)}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--part", part, "--args-json",
                               json.dumps(a)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark part {part!r} failed (exit {proc.returncode}); see {log}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def run_whole(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """One whole process, timed from spawn to exit; its own peak RSS from wait4 (children it waited for included)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        out = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {proc.returncode}); see {log}")
    result = {"wall_s": wall, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    with contextlib.suppress(ValueError):  # the CLI's summary (the tutorial's script prints its own JSON)
        result["status"] = json.loads(out[out.index("{"):]).get("status")
    return result


def initialised_prefect_home(home: Path) -> Path:
    """A PREFECT_HOME whose database exists (as after any earlier use of Prefect on the machine) but that has run
    nothing: no flow runs, no cached results, no server running. Made once; each cold repeat copies it."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run([prefect, "server", "database", "upgrade", "-y"], env={**os.environ, "PREFECT_HOME": str(home)},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return home


def cold_repeat(i: int, a: dict, base_env: dict, tmp: Path, logs: Path, template_home: Path) -> dict:
    """The tutorial's script, the README's run command and its unchanged rerun, each a whole cold process from a
    fresh folder with no Prefect server running; then the README command once more as the very first run on a
    fresh machine (no Prefect database yet: Prefect creates it on the way, about 7 s on two cores)."""
    import shutil

    work = tmp / f"cold{i}"
    env = {k: v for k, v in base_env.items() if k not in ("PREFECT_API_URL", "WANDB_MODE")}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
    homes = {"cli": work / "prefect-home", "first": work / "prefect-home-new"}
    shutil.copytree(template_home, homes["cli"])
    for d in ("tutorial", "run", "run-first"):
        (work / d).mkdir(parents=True)
    n = ["--slice", str(a["cold_slice"]), "--epochs", str(a["epochs"]), "--seed", str(a["seed"])]
    out = {"tutorial": run_whole([sys.executable, str(REPO / "benchmarks" / "tutorial_reference.py"), "--root",
                                  a["staged_root"], "--wandb-dir", str(work / "tutorial"), *n],
                                 work / "tutorial", {**env, "WANDB_MODE": "offline"}, logs / f"cold-tutorial-{i}.log")}
    cli = [sys.executable, "-m", "mnist_pipeline.cli.main", "run", "--source", "local", "--local-dir", a["data_dir"], *n,
           *(["--device", a["device"]] if a.get("device") else [])]
    env_cli = {**env, "PREFECT_HOME": str(homes["cli"])}
    env_first = {**env, "PREFECT_HOME": str(homes["first"])}
    # each run starts a Prefect server for itself (no API configured) and stops it at its end
    out["cli"] = run_whole(cli, work / "run", env_cli, logs / f"cold-cli-{i}.log")
    out["rerun"] = run_whole(cli, work / "run", env_cli, logs / f"cold-rerun-{i}.log")
    out["first"] = run_whole(cli, work / "run-first", env_first, logs / f"cold-first-{i}.log")
    return out


def stage_for_tutorial(data_dir: Path, root: Path) -> None:
    from mnist_pipeline.data import stage_local

    stage_local(data_dir, root)  # <root>/MNIST/raw, uncompressed, as torchvision's MNIST(download=False) reads


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize_cold(colds: list[dict]) -> dict:
    """Medians over the cold repeats; ratios within a repeat, then the median."""
    parts = [p for p in ("tutorial", "cli", "rerun", "first") if p in colds[0]]
    out = {part: {k: median([c[part].get(k) for c in colds]) for k in ("wall_s", "peak_rss_mib")} for part in parts}
    for part in parts[1:]:
        out[part]["status"] = colds[0][part].get("status")
    out["ratios"] = {
        "cold_cli_over_cold_tutorial": median([c["cli"]["wall_s"] / c["tutorial"]["wall_s"] for c in colds]),
        "cold_rerun_over_cold_tutorial": median([c["rerun"]["wall_s"] / c["tutorial"]["wall_s"] for c in colds]),
    }
    if "first" in parts:
        out["ratios"]["first_run_cli_over_cold_tutorial"] = median([c["first"]["wall_s"] / c["tutorial"]["wall_s"]
                                                                    for c in colds])
    return out


def _targets(ratios: dict, figures: dict, cold: dict | None, gpu: bool) -> dict[str, tuple[float, bool]]:
    """Every target of the performance issue (31; 13 for the GPU and the memory) for this kind of machine, as
    (figure, met)."""
    r, f = ratios, figures
    t: dict[str, tuple[float, bool]] = {}
    if gpu:
        t["GPU: pipeline wall / tutorial wall <= 0.5"] = (r["pipeline_wall_over_tutorial_wall"],
                                                         r["pipeline_wall_over_tutorial_wall"] <= 0.5)
        t["GPU: train stage <= 1.2x the bare loop"] = (r["train_stage_over_loop"], r["train_stage_over_loop"] <= 1.2)
        t["GPU: overhead share <= 25%"] = (r["orchestration_overhead_share"], r["orchestration_overhead_share"] <= 0.25)
    else:
        t["CPU: overhead share <= 20%"] = (r["orchestration_overhead_share"], r["orchestration_overhead_share"] <= 0.20)
        t["CPU: pipeline wall / tutorial wall <= 0.6"] = (r["pipeline_wall_over_tutorial_wall"],
                                                         r["pipeline_wall_over_tutorial_wall"] <= 0.6)
        t["CPU: pipeline peak RSS <= 1 GiB (MiB)"] = (f["pipeline"]["peak_rss_mib"], f["pipeline"]["peak_rss_mib"] <= 1024)
    if cold:
        c = cold["ratios"]
        t["cold: README command <= 1.2x the tutorial script"] = (c["cold_cli_over_cold_tutorial"],
                                                                c["cold_cli_over_cold_tutorial"] <= 1.2)
        t["cold: unchanged CLI rerun <= 0.3x the tutorial script"] = (c["cold_rerun_over_cold_tutorial"],
                                                                     c["cold_rerun_over_cold_tutorial"] <= 0.3)
    return t


def summarize(reps: list[dict], onnx: dict, rerun: dict | None, settings: dict, cold: dict | None = None,
              gpu: bool = False) -> dict:
    def med(part, key):
        return median([r[part].get(key) for r in reps])

    ratios = {
        "pipeline_wall_over_tutorial_wall": median([r["pipeline"]["wall_s"] / r["tutorial"]["wall_s"] for r in reps]),
        "orchestration_overhead_share": median(
            [(r["pipeline"]["wall_s"] - r["pipeline"]["train_s"]) / r["pipeline"]["wall_s"] for r in reps]),
        "loop_wall_over_tutorial_wall": median([r["loop"]["wall_s"] / r["tutorial"]["wall_s"] for r in reps]),
        "train_stage_over_loop": median([r["pipeline"]["stages_s"].get("train", float("nan")) / r["loop"]["wall_s"]
                                         for r in reps]),
        "onnxruntime_throughput_over_torch": onnx["throughput_ratio"],  # the median of the per-repeat ratios
    }
    if rerun:
        ratios["rerun_wall_over_full_wall"] = rerun["wall_s"] / med("pipeline", "wall_s")
    figures = {part: {k: med(part, k) for k in ("wall_s", "train_s", "samples_per_s", "test_accuracy",
                                                "peak_rss_mib", "children_peak_rss_mib", "process_wall_s")}
               for part in ("tutorial", "pipeline", "loop")}
    figures["pipeline"]["stages_s"] = {k: median([r["pipeline"]["stages_s"].get(k) for r in reps])
                                       for k in reps[0]["pipeline"]["stages_s"]}
    if cold:
        ratios.update(cold["ratios"])
    checked = _targets(ratios, figures, cold, gpu)
    targets = {k: ok for k, (_v, ok) in checked.items()}
    if rerun:
        targets["unchanged rerun <= 10% of full"] = ratios["rerun_wall_over_full_wall"] <= 0.10
    if figures["pipeline"]["test_accuracy"] is not None and figures["tutorial"]["test_accuracy"] is not None:
        targets["test accuracy >= the tutorial's"] = figures["pipeline"]["test_accuracy"] >= \
            figures["tutorial"]["test_accuracy"]
    if rerun:
        checked["unchanged rerun <= 10% of full"] = (ratios["rerun_wall_over_full_wall"], targets.get(
            "unchanged rerun <= 10% of full"))
    for k in targets:
        checked.setdefault(k, (figures["pipeline"]["test_accuracy"] if k.startswith("test accuracy") else None,
                               targets[k]))
    return {"figures": figures, "ratios": ratios, "onnx": onnx, "rerun": rerun, "cold": cold, "targets": targets,
            "target_figures": {k: v for k, (v, _ok) in checked.items()}, "device": "cuda" if gpu else "cpu"}


def print_report(res: dict) -> None:
    f, r = res["figures"], res["ratios"]
    print(f"\n== benchmark {res['settings']} on {res['machine']}")
    print(f"{'part':10} {'wall s':>8} {'train s':>8} {'samples/s':>10} {'accuracy':>9} {'peak RSS MiB':>13}")
    for part in ("tutorial", "pipeline", "loop"):
        x = f[part]
        acc = f"{x['test_accuracy']:.4f}" if x["test_accuracy"] is not None else "-"
        print(f"{part:10} {x['wall_s']:8.2f} {x['train_s']:8.2f} {x['samples_per_s']:10.0f} {acc:>9} "
              f"{x['peak_rss_mib']:13.0f}")
    if len(res.get("repeats", [])) > 1:
        print("test accuracy by seed: " + "; ".join(
            f"seed {i}: " + ", ".join(f"{part} {r[part]['test_accuracy']:.4f}" for part in ("tutorial", "pipeline", "loop")
                                      if r[part].get("test_accuracy") is not None)
            for i, r in zip(res["settings"]["seeds"], res["repeats"], strict=True)))
    print("pipeline stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in f["pipeline"]["stages_s"].items()))
    o = res["onnx"]
    print(f"onnx: batch 1 p50/p99 ort {o['ort_p50_ms']:.3f}/{o['ort_p99_ms']:.3f} ms, torch "
          f"{o['torch_p50_ms']:.3f}/{o['torch_p99_ms']:.3f} ms; batch {o['batch']} ort {o['ort_throughput']:.0f} img/s, "
          f"torch {o['torch_throughput']:.0f} img/s (channels_last {o['torch_channels_last_throughput']:.0f})")
    if res["rerun"]:
        print(f"unchanged rerun: {res['rerun']['wall_s']:.2f} s ({res['rerun'].get('status')})")
    if res.get("cold"):
        c = res["cold"]
        print(f"cold, whole processes from a fresh folder: tutorial script {c['tutorial']['wall_s']:.2f} s "
              f"({c['tutorial']['peak_rss_mib']:.0f} MiB), README command {c['cli']['wall_s']:.2f} s "
              f"({c['cli']['peak_rss_mib']:.0f} MiB, {c['cli']['status']}), unchanged rerun {c['rerun']['wall_s']:.2f} s "
              f"({c['rerun']['status']})")
        if "first" in c:
            print(f"first run on a fresh machine (Prefect creates its database): README command "
                  f"{c['first']['wall_s']:.2f} s ({c['first']['status']})")
    for k, v in r.items():
        print(f"ratio {k}: {v:.3f}")
    for k, ok in res["targets"].items():
        v = res.get("target_figures", {}).get(k)
        fig = "" if v is None else f" ({v:.3f})" if abs(v) < 100 else f" ({v:.0f})"
        print(f"target {k}: {'met' if ok else 'MISSED'}{fig}")


def _uses_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="directory with the four MNIST IDX files")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--slice", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="repeat i trains with seed SEED + i (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--watch-log-freq", type=int, default=10, help="the pipeline's wandb.watch log_freq")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="the pipeline's ONNX exporter (default: %(default)s, the pipeline's default)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    p.add_argument("--cold-repeats", type=int, default=None, help="repeats of the cold side-by-side (default: "
                   "--repeats; 0 skips it)")
    p.add_argument("--cold-slice", type=int, default=5, help="slice of the cold side-by-side (default: %(default)s, "
                   "the tutorial's and the README command's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="the pipeline's and the loop's "
                   "device (the tutorial's script uses CUDA when present, as written)")
    p.add_argument("--smoke", action="store_true", help="a quick run that checks the benchmark works (figures "
                   "meaningless): epochs=1, slice=30, one repeat")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--args-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        child_main(args.part, args.args_json)
        return 0
    if args.smoke:
        args.epochs, args.slice, args.repeats, args.cold_slice = 1, 30, 1, 30
    if args.cold_repeats is None:
        args.cold_repeats = args.repeats
    if not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a directory")

    from mnist_pipeline.cli.local_server import local_prefect_server

    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        tmp = Path(tmp)
        stage_for_tutorial(args.data_dir, tmp / "tutorial-data")
        logs = tmp / "logs"
        logs.mkdir()
        with local_prefect_server(home=tmp / "prefect-home") as url:
            env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
            env.pop("WANDB_API_KEY", None)
            base = {"data_dir": str(args.data_dir.resolve()), "epochs": args.epochs, "slice": args.slice,
                    "seed": args.seed, "staged_root": str(tmp / "tutorial-data"), "watch_log_freq": args.watch_log_freq,
                    "exporter": args.exporter, "device": args.device, "cold_slice": args.cold_slice,
                    "latency_samples": 200 if not args.smoke else 20, "timing_seconds": 2 if not args.smoke else 0.1}
            reps = []
            for i in range(args.repeats):
                work = tmp / f"rep{i}"
                a = {**base, "seed": args.seed + i, "repeat": i, "work": str(work), "wandb_dir": str(work / "wandb")}
                (work / "wandb").mkdir(parents=True)
                rep = {}
                for part in ("tutorial", "pipeline", "loop"):
                    rep[part] = run_part(part, a, env, logs)
                    print(f"repeat {i + 1}/{args.repeats} {part}: {rep[part]['wall_s']:.2f} s", flush=True)
                p = rep["pipeline"]
                rep["onnx"] = run_part("onnx", {**a, "onnx_path": p["onnx_path"], "model_path": p["model_path"],
                                                "test_path": p["test_path"], "batch": 256}, env, logs)
                reps.append(rep)
            onnx = {k: median([r["onnx"][k] for r in reps]) for k in reps[0]["onnx"]}
            rerun = run_part("rerun", {**a, "repeat": "rerun"}, env, logs)
            print(f"rerun: {rerun['wall_s']:.2f} s", flush=True)
        colds = []
        template = initialised_prefect_home(tmp / "prefect-home-initialised") if args.cold_repeats else None
        for i in range(args.cold_repeats):
            colds.append(cold_repeat(i, base, env, tmp, logs, template))
            print(f"cold {i + 1}/{args.cold_repeats}: " + ", ".join(f"{k} {v['wall_s']:.2f} s"
                                                                    for k, v in colds[-1].items()), flush=True)
        settings = {"data_dir": str(args.data_dir), "epochs": args.epochs, "slice": args.slice, "seed": args.seed,
                    "seeds": [args.seed + i for i in range(args.repeats)],
                    "repeats": args.repeats, "smoke": args.smoke, "watch_log_freq": args.watch_log_freq,
                    "exporter": args.exporter, "device": args.device, "cold_repeats": args.cold_repeats,
                    "cold_slice": args.cold_slice}
        res = summarize(reps, onnx, rerun, settings, cold=summarize_cold(colds) if colds else None,
                        gpu=_uses_cuda(args.device))
        res["cold_repeats"] = colds
        res.update({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "settings": settings,
            "repeats": reps,
        })
    print_report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
