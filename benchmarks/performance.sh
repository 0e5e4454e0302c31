#!/usr/bin/env bash
# Every number of the README's "Performance" section, in one command (~10 minutes on 2 cores):
# app=bench over the backends and precisions, the peers measured the same way, then the report.
#   ./benchmarks/performance.sh [OUT_DIR]          (default runs/performance)
# The sweep runs on a local Ray (`pip install -e ".[ray]"`; `setup.sh --test` has it), one job
# at a time, each in a fresh process (max_calls=1), so each job's peak RSS is its own.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/performance}"
if [ -e "$out" ]; then
  echo "performance.sh: $out exists; give another directory or remove it" >&2
  exit 2
fi
export OMP_NUM_THREADS=2 RAY_USAGE_STATS_ENABLED=0  # Ray would set 1 for its 1-CPU tasks
.venv/bin/plugstack --multirun hydra/launcher=ray +hydra.launcher.ray.init.num_cpus=1 \
  +hydra.launcher.ray.init.include_dashboard=false +hydra.launcher.ray.remote.max_calls=1 \
  app=bench backend=cpu,onnx backend.quantize=none,int8,int4,native backend.threads=2 "hydra.sweep.dir=$out"
.venv/bin/python benchmarks/bench_peers.py --out "$out/peers" --threads 2 \
  --peers transformers,genai-fp32,genai-int8,genai-int4,llama-cpp
.venv/bin/plugstack report "$out" --baseline peer=transformers --baseline peer=genai-int4
