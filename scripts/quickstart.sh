#!/usr/bin/env bash
# From a fresh clone to a face-personalised image: make a venv, install, run one generation.
# Uses your model files when given (see `bash scripts/quickstart.sh --help`), else random stand-in weights.
# TORCH_SPEC picks the torch build (default: the CPU wheel torch==2.13.0; e.g. TORCH_SPEC=torch for CUDA).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${UNIID_VENV:-$ROOT/.venv-quickstart}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC"
  python -m pip install --quiet "$TORCH_SPEC"
fi
TORCH_PIN="$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
echo "== installing the project's requirements (torch $TORCH_PIN kept as it is)"
python -m pip install --quiet -r training/requirements.txt -c <(printf 'torch==%s\n' "$TORCH_PIN")
echo "== running uniid_core.generate"
exec python scripts/quickstart.py "$@"
