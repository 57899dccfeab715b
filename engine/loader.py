"""Build a ``CausalLM`` from a checkpoint folder's safetensors files.

The checkpoint's separate q/k/v and gate/up projections are fused into one matrix each as they
are read (one GEMM instead of three or two). The model is created on the ``meta`` device and every
parameter is assigned from the files, so no memory is spent on random initialisation and a
missing or unexpected tensor is an error rather than a silently random weight.
"""

from __future__ import annotations

import re

import torch
from safetensors import safe_open

from engine.model import CausalLM
from engine.model_config import ModelLoadError, ModelSpec

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_FUSED = {  # checkpoint suffix -> (our parameter, part index)
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


def load_model(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> CausalLM:
    with torch.device("meta"):
        model = CausalLM(spec)
    parts: dict[str, dict[int, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for file in sorted(spec.path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                _route(name, f.get_tensor(name).to(dtype), state, parts)
    for target, pieces in parts.items():
        expected = 3 if "qkv" in target else 2
        if len(pieces) != expected:
            raise ModelLoadError(f"checkpoint in {spec.path} lacks part of {target}")
        state[target] = torch.cat([pieces[i] for i in range(expected)], dim=0)
    if "lm_head.weight" not in state:
        if not spec.tie_word_embeddings:
            raise ModelLoadError(f"checkpoint in {spec.path} has no lm_head.weight and does not tie embeddings")
        state["lm_head.weight"] = state["embed_tokens.weight"]
    expected_keys = {k for k in model.state_dict() if not k.startswith("rotary.")}
    missing, unexpected = expected_keys - state.keys(), state.keys() - expected_keys
    if missing or unexpected:
        raise ModelLoadError(f"checkpoint in {spec.path} does not match {spec.architecture}: "
                             f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for key, tensor in state.items():
        want = model.get_parameter(key).shape
        if tensor.shape != want:
            raise ModelLoadError(f"{key} has shape {tuple(tensor.shape)}, config implies {tuple(want)}")
    model.load_state_dict(state, strict=False, assign=True)
    return model.to(device).eval()


def _route(name: str, tensor: torch.Tensor, state: dict, parts: dict) -> None:
    if name.startswith("model.") and not _LAYER.match(name):
        state[name[len("model."):]] = tensor
        return
    match = _LAYER.match(name)
    if match is None:
        state[name] = tensor
        return
    layer, rest = match.groups()
    for suffix, (target, index) in _FUSED.items():
        if rest.startswith(suffix + "."):
            kind = rest[len(suffix) + 1:]
            parts.setdefault(f"layers.{layer}.{target}.{kind}", {})[index] = tensor
            return
    state[f"layers.{layer}.{rest}"] = tensor
