"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2) in plain torch, over a paged KV cache.

Read top to bottom: RMSNorm, rotary embedding, attention, MLP, decoder layer, model. The
numerics follow the reference implementation in ``transformers`` (RMSNorm in float32, rotary
frequencies from ``transformers``' own RoPE initialisers, softmax in float32), which the tests
compare against. The difference is attention: every layer writes the new tokens' keys and
values into the paged cache and attends through a ``KernelBackend`` (Triton on CUDA, torch on
CPU), so one forward serves a mixed batch of decode tokens and prefill chunks.

Token order in a batch (fixed by ``AttentionMetadata``)::

    [ decode tokens: one per decoding sequence | prefill chunk 0 | prefill chunk 1 | ... ]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.model_config import ModelSpec


@dataclass(frozen=True)
class AttentionMetadata:
    """Where each token's KV goes and what each query attends to (all tensors on the model device).

    slot_mapping[t] = block_id * block_size + offset for every token t of the batch.
    Decode part (first ``num_decode`` tokens): one query per sequence, attending to
    ``decode_context_lens`` cached tokens through ``decode_block_tables``.
    Prefill part: chunks delimited by ``prefill_query_start_loc`` (relative to the first prefill
    token); ``prefill_context_lens`` counts cached tokens including the chunk.
    """

    slot_mapping: torch.Tensor
    num_decode: int
    decode_block_tables: torch.Tensor | None
    decode_context_lens: torch.Tensor | None
    prefill_block_tables: torch.Tensor | None
    prefill_query_start_loc: torch.Tensor | None
    prefill_context_lens: torch.Tensor | None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to the context window, indexed per token."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        with torch.device("cpu"):  # real tables even when the model is built on the meta device
            inv_freq, scaling = _rope_frequencies(spec)
            positions = torch.arange(spec.max_model_len, dtype=torch.float32)
            freqs = torch.outer(positions, inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)


def _rope_frequencies(spec: ModelSpec) -> tuple[torch.Tensor, float]:
    if spec.rope_type == "default":
        base = float(spec.hf_config.rope_parameters["rope_theta"])
        exponent = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
        return 1.0 / (base ** exponent), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[spec.rope_type](spec.hf_config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, D]."""
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv_proj = nn.Linear(spec.hidden_size, self.q_size + 2 * self.kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, spec.hidden_size, bias=False)

    def forward(self, x, cos, sin, meta: AttentionMetadata, k_cache, v_cache, ops) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rotary(q.view(tokens, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(k.view(tokens, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(tokens, self.num_kv_heads, self.head_dim)
        ops.write_kv(k.contiguous(), v.contiguous(), k_cache, v_cache, meta.slot_mapping)
        nd = meta.num_decode
        parts = []
        if nd:
            parts.append(ops.decode_attention(q[:nd].contiguous(), k_cache, v_cache,
                                              meta.decode_block_tables, meta.decode_context_lens, self.scale))
        if nd < tokens:
            parts.append(ops.prefill_attention(q[nd:].contiguous(), k_cache, v_cache, meta.prefill_block_tables,
                                               meta.prefill_query_start_loc, meta.prefill_context_lens, self.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return self.o_proj(out.reshape(tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec)

    def forward(self, x, cos, sin, meta, k_cache, v_cache, ops) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, k_cache, v_cache, ops)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    """The whole decoder. ``forward`` returns logits only for ``logits_indices`` (float32)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(spec)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: torch.Tensor, logits_indices: torch.Tensor, ops) -> torch.Tensor:
        """kv_cache: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, kv_cache[i, 0], kv_cache[i, 1], ops)
        x = self.norm(x[logits_indices])
        return self.lm_head(x).float()
