#!/usr/bin/env bash
# Installs what the project needs into the current Python (a venv or conda env is recommended).
# PyTorch is pinned to builds known to work together with torchvision on CPU and GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64|arm64) "$PY" -m pip install --quiet "torch==2.9.1" "torchvision==0.24.1" ;;
    *)             "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" ;;
  esac
fi
"$PY" -m pip install --quiet -e ".[test,ray,slurm]"  # ray, slurm: the study's --executor ray|slurm (tested too)
# papermill runs notebooks in the kernel named python3: make sure it is this Python.
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
