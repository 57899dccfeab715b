"""The committed client/proto modules are what scripts/gen_proto.sh makes from tandem.proto."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("tandem_pb2.py", "tandem_pb2.pyi", "tandem_pb2_grpc.py")


def test_committed_generated_modules_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True,
                   env=env, timeout=120)
    for name in GENERATED:
        fresh = (tmp_path / "client/proto" / name).read_text()
        committed = (ROOT / "client/proto" / name).read_text()
        assert fresh == committed, f"client/proto/{name} is stale: run scripts/gen_proto.sh"
