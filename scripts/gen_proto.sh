#!/usr/bin/env bash
# Regenerate the committed gRPC modules in client/proto/ from client/proto/tandem.proto.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root, i.e. in place)
# PYTHON picks the interpreter (default .venv/bin/python); it needs grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-.}
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I. --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  client/proto/tandem.proto
