#!/usr/bin/env bash
# Set everything up, then run Tandem's main job on the embedded default model.
# Extra arguments are passed to `tandem generate` (for example --temperature 0.7 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PROMPT=${TANDEM_PROMPT:-"Explain in three sentences why splitting prefill from decode helps an LLM server keep its latency targets."}
exec .venv/bin/tandem generate --max-tokens 160 "$@" "$PROMPT"
