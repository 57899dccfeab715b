#!/usr/bin/env bash
# Set everything up, then run Tandem's main job: a local Ray cluster on the embedded default model
# (one prefill + one decode worker) replaying a time-scaled slice of the Azure conversation trace
# with mixed lanes; prints the per-lane table and writes tandem-demo.json and tandem-demo.png.
# Extra arguments go to `tandem demo` (for example --duration 120 --rate 1.5 or --colocated).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tandem demo --duration 60 --json tandem-demo.json --plot tandem-demo.png "$@"
