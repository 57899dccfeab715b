#!/usr/bin/env bash
# Set everything up, then run the whole test suite (GPU tests skip without a GPU).
# Extra arguments go to pytest (for example -m "not slow" or -k parity).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
