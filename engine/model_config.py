"""What the engine needs to know about a checkpoint, read from a local Hugging Face folder.

``load_model_spec(path)`` validates the folder (``config.json``, ``*.safetensors``, tokenizer
files) and the architecture, and returns a frozen ``ModelSpec``. Everything the model, the KV
cache and the scheduler need is derived here once, so the rest of the engine never touches the
raw config. Errors are ``ModelLoadError`` with a message that names the file or field at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Architectures whose forward this engine implements, with what distinguishes them.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "Llama 2/3 (GQA, RoPE scaling), SmolLM",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2/2.5 (q/k/v biases, tied embeddings)",
}
# RoPE variants whose frequencies do not depend on the sequence length being served.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelLoadError(ValueError):
    """The model folder is missing, malformed or holds an unsupported model."""


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool
    tie_word_embeddings: bool
    max_model_len: int
    rope_type: str
    eos_token_ids: tuple[int, ...]
    hf_config: Any  # transformers.PretrainedConfig, used only to compute RoPE frequencies

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


def load_model_spec(path: str | Path) -> ModelSpec:
    """Validate a local HF folder and describe the model in it."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist or is not a directory")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json: expected a Hugging Face model folder")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_file} must hold a JSON object")
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        supported = ", ".join(f"{a} ({d})" for a, d in SUPPORTED_ARCHITECTURES.items())
        raise ModelLoadError(
            f"unsupported architecture {archs or raw.get('model_type')!r} in {config_file}; "
            f"Tandem supports: {supported}")
    if not list(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} has no *.safetensors weight files")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"{folder} has no tokenizer (one of {', '.join(_TOKENIZER_FILES)})")

    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # transformers raises many types for a bad config
        raise ModelLoadError(f"could not parse {config_file}: {exc}") from exc
    return _spec_from_config(folder, arch, cfg)


def _spec_from_config(folder: Path, arch: str, cfg: Any) -> ModelSpec:
    def need(name: str) -> Any:
        value = getattr(cfg, name, None)
        if value is None:
            raise ModelLoadError(f"config.json in {folder} lacks required field {name!r}")
        return value

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    if heads % kv_heads:
        raise ModelLoadError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ModelLoadError(f"hidden_act={cfg.hidden_act!r} is not supported (only 'silu')")
    if getattr(cfg, "mlp_bias", False):
        raise ModelLoadError("mlp_bias=true is not supported")
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(f"rope_type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if getattr(cfg, "use_sliding_window", False) and arch == "Qwen2ForCausalLM":
        raise ModelLoadError("Qwen2 use_sliding_window=true is not supported")
    max_len = int(need("max_position_embeddings"))
    window = getattr(cfg, "sliding_window", None)
    if arch == "MistralForCausalLM" and window:
        # Attention here is always full; capping the context at the window keeps it exact.
        max_len = min(max_len, int(window))
    eos = getattr(cfg, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    return ModelSpec(
        path=folder, architecture=arch, vocab_size=int(need("vocab_size")), hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")), num_layers=int(need("num_hidden_layers")),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-6)),
        qkv_bias=bool(getattr(cfg, "attention_bias", False)) or arch == "Qwen2ForCausalLM",
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        max_model_len=max_len, rope_type=rope_type, eos_token_ids=eos_ids, hf_config=cfg)
