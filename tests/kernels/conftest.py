"""Shared set-up for the kernel tests: paged caches built from known dense K/V, and a naive
dense attention to hold the kernels to.

Without CUDA the Triton kernels run in Triton's CPU interpreter, which must be switched on
before triton is first imported, hence the environment line at the very top.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import dataclass  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402


@dataclass
class PagedKV:
    """A paged cache holding ``dense_k[s]``/``dense_v[s]`` (``[ctx_s, Hkv, D]``) per sequence."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [S, max_blocks]
    context_lens: torch.Tensor  # int32 [S]
    dense_k: list[torch.Tensor]
    dense_v: list[torch.Tensor]


def make_paged_kv(context_lens, num_kv_heads, head_dim, block_size, dtype=torch.float32,
                  device="cpu", table_fill=None, seed=0) -> PagedKV:
    """Scatter random per-sequence K/V into randomly chosen, non-contiguous cache blocks.

    Unused cache slots hold random garbage. Table entries past a sequence's blocks are
    ``table_fill`` (default: random valid block ids, i.e. other sequences' blocks).
    """
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-ctx // block_size) for ctx in context_lens]
    num_blocks = sum(needed) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(needed) + 1
    tables = torch.randint(0, num_blocks, (len(context_lens), width), generator=gen)
    dense_k, dense_v = [], []
    for s, ctx in enumerate(context_lens):
        own, order = order[: needed[s]], order[needed[s]:]
        tables[s, : needed[s]] = torch.tensor(own)
        if table_fill is not None:
            tables[s, needed[s]:] = table_fill
        k = torch.randn((ctx, num_kv_heads, head_dim), generator=gen).to(dtype)
        v = torch.randn((ctx, num_kv_heads, head_dim), generator=gen).to(dtype)
        for pos in range(ctx):
            block, off = own[pos // block_size], pos % block_size
            k_cache[block, off], v_cache[block, off] = k[pos], v[pos]
        dense_k.append(k.to(device))
        dense_v.append(v.to(device))
    return PagedKV(k_cache.to(device), v_cache.to(device), tables.to(torch.int32).to(device),
                   torch.tensor(context_lens, dtype=torch.int32, device=device), dense_k, dense_v)


def naive_attention(q, k, v, last_key, scale) -> torch.Tensor:
    """Dense float64 attention: query row ``i`` sees keys ``0..last_key[i]``.

    q ``[n, Hq, D]``, k/v ``[ctx, Hkv, D]``, last_key ``[n]`` -> ``[n, Hq, D]`` float64.
    """
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,khd->hnk", q.double(), k) * scale
    hidden = torch.arange(k.shape[0], device=q.device)[None, :] > last_key[:, None].to(q.device)
    probs = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
    return torch.einsum("hnk,khd->nhd", probs, v)


def naive_decode(q, paged: PagedKV, scale) -> torch.Tensor:
    rows = [naive_attention(q[b : b + 1], k, v, torch.tensor([k.shape[0] - 1]), scale)
            for b, (k, v) in enumerate(zip(paged.dense_k, paged.dense_v))]
    return torch.cat(rows)


def naive_prefill(q, paged: PagedKV, q_lens, scale) -> torch.Tensor:
    rows, start = [], 0
    for q_len, k, v in zip(q_lens, paged.dense_k, paged.dense_v):
        last = k.shape[0] - q_len + torch.arange(q_len)
        rows.append(naive_attention(q[start : start + q_len], k, v, last, scale))
        start += q_len
    return torch.cat(rows)


def query_start_loc(q_lens, device="cpu") -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)


@pytest.fixture
def kit():
    """The helpers above, for test modules (importing from a conftest is fragile)."""
    return SimpleNamespace(make_paged_kv=make_paged_kv, naive_decode=naive_decode,
                           naive_prefill=naive_prefill, query_start_loc=query_start_loc)


@pytest.fixture
def triton_ops():
    """The Triton kernel modules, or a skip when triton cannot run here."""
    pytest.importorskip("triton")
    from kernels import interpreter_enabled

    if not torch.cuda.is_available() and not interpreter_enabled():
        pytest.skip("no CUDA and TRITON_INTERPRET is off")
    from kernels import attention_triton, kv_ops_triton

    return attention_triton, kv_ops_triton
