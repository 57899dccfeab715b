"""KV-cache memory per token from model config numbers, and KV transfer time between workers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The numbers that size a decoder-only model's KV cache and weights."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int = 2
    params: float = 0.0          # parameter count, for the weight memory
    weight_dtype_bytes: int = 2

    def __post_init__(self) -> None:
        if min(self.num_layers, self.num_kv_heads, self.head_dim, self.kv_dtype_bytes) < 1:
            raise ValueError(f"model shape needs positive sizes: {self}")

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 × layers × kv_heads × head_dim × dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return int(self.params * self.weight_dtype_bytes)


LLAMA3_8B = ModelShape("llama3-8b", num_layers=32, num_kv_heads=8, head_dim=128, params=8.03e9)
LLAMA2_7B = ModelShape("llama2-7b", num_layers=32, num_kv_heads=32, head_dim=128, params=6.74e9)
MODELS = {m.name: m for m in (LLAMA3_8B, LLAMA2_7B)}


def kv_capacity_tokens(model: ModelShape, gpu_bytes: float, utilization: float = 0.9,
                       activation_bytes: float = 2e9) -> int:
    """Tokens of KV that fit in a GPU after weights and an activation allowance."""
    free = gpu_bytes * utilization - model.weight_bytes - activation_bytes
    if free <= 0:
        raise ValueError(f"{model.name} does not fit in {gpu_bytes / 2**30:.0f} GiB")
    return int(free // model.kv_bytes_per_token)


@dataclass(frozen=True)
class Link:
    """A KV transfer path: bandwidth in bytes/s and a fixed per-transfer latency in seconds."""

    bandwidth_bytes_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_s <= 0 or self.latency_s < 0:
            raise ValueError(f"a link needs positive bandwidth and non-negative latency: {self}")

    def transfer_s(self, model: ModelShape, tokens: int) -> float:
        """Seconds to move `tokens` tokens of KV over this link."""
        return self.latency_s + tokens * model.kv_bytes_per_token / self.bandwidth_bytes_s
