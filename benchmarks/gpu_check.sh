#!/usr/bin/env bash
# The GPU check of issue 13, ready to run on a machine with CUDA and the project's dependencies importable:
#   1. the README's run command, cold, from a fresh folder and a fresh PREFECT_HOME, with --device cuda;
#   2. the benchmark on the GPU (3 repeats of tutorial / pipeline / loop, onnx, rerun; one cold side-by-side);
#   3. one short table, printed last.
# Under 5 minutes: each step has its own time limit. Results (JSON, logs) go to $OUT when set, else to a temp dir.
#
#   benchmarks/gpu_check.sh [DATA_DIR]   DATA_DIR: the four MNIST IDX files (default ../shared/datasets/mnist-subset;
#                                        when absent, synthetic seven-segment digits are written and used instead)
#   benchmarks/gpu_check.sh --cpu-smoke [DATA_DIR]
#                                        the same steps on the CPU with tiny sizes: how the test suite keeps this
#                                        script working on machines without a GPU (figures meaningless)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1; shift; fi
DATA="${1:-$REPO/../shared/datasets/mnist-subset}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || command -v python)"; fi
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")"
RESULTS="${OUT:-$WORK}"
mkdir -p "$RESULTS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PREFECT_HOME="$WORK/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false WANDB_SILENT=true
unset PREFECT_API_URL WANDB_API_KEY

if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu; RUN_SIZE=(--slice 30 --epochs 1); BENCH_ARGS=(--smoke --device cpu); T_RUN=300; T_BENCH=600
else
  DEVICE=cuda; RUN_SIZE=(); BENCH_ARGS=(--device cuda --repeats 3 --cold-repeats 1); T_RUN=90; T_BENCH=200
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

if [[ ! -d "$DATA" ]]; then
  echo "gpu_check: $DATA not found; writing synthetic IDX files (figures are then not comparable with real MNIST)"
  DATA="$WORK/synthetic"
  "$PY" -c "import sys; from pathlib import Path; from mnist_pipeline.data import write_synthetic, raw_folder
write_synthetic(Path(sys.argv[1]), 18000, 10000)" "$DATA"
  DATA="$DATA/MNIST/raw"
fi
DATA="$(cd "$DATA" && pwd)"

echo "== 1/3 the README's run command, cold, --device $DEVICE"
mkdir -p "$WORK/readme"
start=$(date +%s.%N)
(cd "$WORK/readme" && timeout "$T_RUN" "$PY" -m mnist_pipeline.cli.main run --source local --local-dir "$DATA" --device "$DEVICE" \
  "${RUN_SIZE[@]}" >"$RESULTS/readme-run.json" 2>"$RESULTS/readme-run.log")
end=$(date +%s.%N)
"$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$end" >"$RESULTS/readme-run.wall"

echo "== 2/3 the benchmark on $DEVICE"
timeout "$T_BENCH" "$PY" -m benchmarks.bench --data-dir "$DATA" "${BENCH_ARGS[@]}" --out "$RESULTS/results-$DEVICE.json" \
  >"$RESULTS/bench.log" 2>&1 || { tail -30 "$RESULTS/bench.log"; exit 1; }

echo "== 3/3 summary"
"$PY" -m benchmarks.gpu_summary "$RESULTS" "$DEVICE"
