"""The paged KV cache tensor and the export/import of a sequence's blocks (the KV handoff).

Layout: ``[num_layers, 2 (key, value), num_blocks, block_size, num_kv_heads, head_dim]``. Block
ids come from the ``BlockManager``; this module only moves bytes.

A ``KVHandoff`` is what a prefill worker gives a decode worker: one contiguous buffer
``[num_layers, 2, n_blocks, block_size, num_kv_heads, head_dim]`` plus ``KVHandoffMeta``
describing it. The buffer belongs to the handoff (it is a copy), so the source blocks may be
freed as soon as the receiver has confirmed the import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVHandoffMeta:
    request_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: str                      # torch dtype name, e.g. "float32"
    num_tokens: int                 # tokens whose KV the buffer holds
    block_ids: tuple[int, ...]      # the blocks they came from on the sender
    token_ids: tuple[int, ...]      # those tokens, so the receiver can key its prefix cache

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, len(self.block_ids), self.block_size, self.num_kv_heads, self.head_dim)


@dataclass(frozen=True)
class KVHandoff:
    meta: KVHandoffMeta
    buffer: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()


class HandoffMismatch(ValueError):
    """The handoff's layout does not fit the receiving cache."""


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, ops):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.tensor = torch.zeros(num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim,
                                  dtype=dtype, device=device)
        self.ops = ops

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def copy_block(self, src: int, dst: int) -> None:
        self.tensor[:, :, dst].copy_(self.tensor[:, :, src])

    def export_blocks(self, request_id: str, block_ids: list[int], token_ids: list[int]) -> KVHandoff:
        layers, _, _, bs, heads, dim = self.tensor.shape
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.tensor.device)
        buffer = self.ops.gather_blocks(self.tensor, idx)
        meta = KVHandoffMeta(request_id=request_id, num_layers=layers, num_kv_heads=heads, head_dim=dim,
                             block_size=bs, dtype=str(self.tensor.dtype).removeprefix("torch."),
                             num_tokens=len(token_ids), block_ids=tuple(block_ids), token_ids=tuple(token_ids))
        return KVHandoff(meta, buffer)

    def import_blocks(self, handoff: KVHandoff, block_ids: list[int]) -> None:
        meta, (layers, _, _, bs, heads, dim) = handoff.meta, self.tensor.shape
        if (meta.num_layers, meta.block_size, meta.num_kv_heads, meta.head_dim) != (layers, bs, heads, dim):
            raise HandoffMismatch(
                f"handoff for {meta.request_id} has layers/block/heads/dim "
                f"{(meta.num_layers, meta.block_size, meta.num_kv_heads, meta.head_dim)}, cache has {(layers, bs, heads, dim)}")
        if tuple(handoff.buffer.shape) != meta.shape or len(block_ids) != len(meta.block_ids):
            raise HandoffMismatch(f"handoff buffer shape {tuple(handoff.buffer.shape)} != {meta.shape}")
        buffer = handoff.buffer.to(device=self.tensor.device, dtype=self.tensor.dtype)
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.tensor.device)
        self.ops.scatter_blocks(buffer.contiguous(), self.tensor, idx)
