#!/usr/bin/env bash
# From a fresh clone to a face-personalised image: make (or reuse) a venv, install, run one generation.
# Uses your model files when given (see `bash scripts/quickstart.sh --help`), else random stand-in weights.
# UNIID_VENV picks the venv (default .venv, shared with scripts/run_tests.sh); TORCH_SPEC the torch build
# (default: the CPU wheel torch==2.13.0; e.g. TORCH_SPEC=torch for CUDA); PYTHON the interpreter for a new venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${UNIID_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

for arg in "$@"; do
  if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
    # Help needs only the standard library: nothing is installed for it.
    "${PYTHON:-python3}" scripts/quickstart.py --help
    echo
    echo "environment: UNIID_VENV (default .venv), TORCH_SPEC (default torch==2.13.0, the CPU wheel; e.g."
    echo "TORCH_SPEC=torch for a CUDA build), PYTHON (interpreter for a new venv, default python3)"
    exit 0
  fi
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# The version comes from torch's metadata: importing torch before numpy is installed prints a warning.
torch_version() { python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true; }
TORCH_PIN="$(torch_version)"
if [ -z "$TORCH_PIN" ]; then
  echo "== installing $TORCH_SPEC"
  python -m pip install --quiet "$TORCH_SPEC"
  TORCH_PIN="$(torch_version)"
fi
echo "== installing the project's requirements (torch $TORCH_PIN kept as it is)"
python -m pip install --quiet -r training/requirements.txt -c <(printf 'torch==%s\n' "$TORCH_PIN")
echo "== running uniid_core.generate"
exec python scripts/quickstart.py "$@"
