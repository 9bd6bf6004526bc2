#!/usr/bin/env bash
# The device-machine entry of benchmarks/gpu_table2_cell.py (one Table 2 cell at the paper's protocol + FFW).
#
# Here, once:    .venv/bin/python benchmarks/gpu_table2_cell.py --prepare-cache
# Then (device): bash benchmarks/gpu_table2_cell.sh      with the ignored ./data-cache carried along, $OUT set
#
# Needs on the GPU machine: python3 with a CUDA build of torch and debiaskit's dependencies (numpy, safetensors,
# typer, rich, matplotlib, platformdirs, pillow); debiaskit itself comes from this working tree (PYTHONPATH=src).
# Every check below fails in seconds, before any compute.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-table2}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not available"
"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "numpy", "safetensors", "typer", "rich", "matplotlib", "platformdirs", "PIL")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages on this machine: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
test -d data-cache/mnist || { echo "data-cache/mnist is missing: run --prepare-cache here and carry data-cache"; exit 2; }
export DEBIASKIT_DATA="$PWD/data-cache" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu_table2_cell.py --device cuda --out "$OUT/table2" "$@"
