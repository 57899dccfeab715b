"""KV-cache data movement in plain torch: the reference for ``kv_ops_triton`` and the CPU path.

Layouts (owned by the engine; these functions read or write them in place)::

    k_cache, v_cache : [num_blocks, block_size, Hkv, D]            one layer
    kv               : [num_layers, 2, num_blocks, block_size, Hkv, D]  all layers, 0 = K, 1 = V
    buffer           : [num_layers, 2, n, block_size, Hkv, D]       n blocks packed for transfer

A slot is ``block_id * block_size + offset``. A negative slot marks a padding token whose KV
is not written. Block ids in ``scatter_blocks_ref`` must be distinct (the last write would
otherwise win in an unspecified order).
"""

from __future__ import annotations

import torch


def write_kv_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the KV of ``T`` new tokens into one layer's cache, in place.

    Args:
        key, value: ``[T, Hkv, D]``, same dtype as the caches.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]``.
        slot_mapping: int64 ``[T]``; token ``t`` goes to flat slot ``slot_mapping[t]``
            (skipped when negative).
    """
    hkv, d = k_cache.shape[-2:]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].to(torch.int64)
    k_cache.view(-1, hkv, d)[slots] = key[keep]
    v_cache.view(-1, hkv, d)[slots] = value[keep]


def gather_blocks_ref(kv: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Copy blocks ``block_ids`` of every layer out of ``kv`` into a new contiguous buffer.

    Args:
        kv: ``[L, 2, num_blocks, block_size, Hkv, D]``.
        block_ids: int64 ``[n]``.

    Returns:
        ``[L, 2, n, block_size, Hkv, D]``, owned by the caller; ``kv`` is untouched.
    """
    return kv[:, :, block_ids.to(torch.int64)].contiguous()


def scatter_blocks_ref(buffer: torch.Tensor, kv: torch.Tensor, block_ids: torch.Tensor) -> None:
    """Inverse of ``gather_blocks_ref``: write ``buffer[:, :, i]`` into block ``block_ids[i]``.

    Args:
        buffer: ``[L, 2, n, block_size, Hkv, D]``, same dtype as ``kv``; only read.
        kv: ``[L, 2, num_blocks, block_size, Hkv, D]``, written in place.
        block_ids: int64 ``[n]``, distinct.
    """
    kv[:, :, block_ids.to(torch.int64)] = buffer
