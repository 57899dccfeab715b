"""Paged attention in plain torch: the reference the Triton kernels are tested against.

It is also the CPU serving path, so it is batched rather than a per-token loop.

Cache layout (one layer, owned by the engine; these functions only read it)::

    k_cache, v_cache : [num_blocks, block_size, num_kv_heads, head_dim]

Token ``t`` of a sequence lives in block ``block_tables[seq, t // block_size]`` at offset
``t % block_size``. Query head ``h`` reads kv head ``h // (Hq // Hkv)`` (GQA). Inputs stay in
their dtype (torch's SDPA accumulates the softmax in float32 for bf16/fp16 on CPU and CUDA;
converting the gathered K/V first measured ~3x slower); outputs have the dtype of ``q``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Decode gathers K and V for a batch chunk at a time; this bounds one gathered tensor
# (chunk * max_len * Hkv * head_dim elements) so B=64 x 2k contexts stays a few hundred MB.
_DECODE_GATHER_ELEMS = 1 << 25


def _check_gqa(num_q_heads: int, num_kv_heads: int) -> int:
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    return num_q_heads // num_kv_heads


class Workspace:
    """Reusable scratch buffers for the gathers below, owned by one backend instance.

    Fresh multi-megabyte tensors every layer cost page faults on CPU (a gather into a new
    buffer measured ~2.7x slower than into a reused one), so each named buffer grows to the
    largest size asked for and is then reused. Not thread-safe: one engine, one workspace.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel]


def _gather_tokens(cache: torch.Tensor, tables: torch.Tensor, length: int,
                   workspace: Workspace | None = None, name: str = "") -> torch.Tensor:
    """cache [NB, BS, Hkv, D], tables int64 [B, nblk] -> [B, length, Hkv, D] (first tokens)."""
    b, nblk = tables.shape
    _, bs, hkv, d = cache.shape
    flat = tables.reshape(-1)
    if workspace is None:
        gathered = cache.index_select(0, flat)
    else:
        buf = workspace.get(name, flat.numel() * bs * hkv * d, cache.dtype, cache.device)
        gathered = torch.index_select(cache, 0, flat, out=buf.view(flat.numel(), bs, hkv, d))
    return gathered.view(b, nblk * bs, hkv, d)[:, :length]


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """One new query token per sequence against its whole paged context.

    Args:
        q: ``[B, Hq, D]``.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]``; the current token's KV is
            already written.
        block_tables: int32 ``[B, max_blocks]``; entries past a sequence's
            ``ceil(context_len / block_size)`` blocks are ignored (any value).
        context_lens: int32 ``[B]``, tokens in the cache per sequence, each >= 1.
        scale: softmax scale, usually ``head_dim ** -0.5``.
        workspace: optional scratch buffers reused across calls (see ``Workspace``).

    Returns:
        ``[B, Hq, D]`` in ``q.dtype``.

    Rule: sort the sequences by context length and cut them into groups whose padded size
    (count x longest) stays within ``_PAD_SLACK`` of their real size; per group, gather the blocks
    into ``[n, max_len, Hkv, D]``, mask positions ``>= context_len``, and run one SDPA call with q
    viewed as ``[n, Hkv, group, D]`` so the query heads sharing a kv head play the role of the
    query-length axis. Grouping keeps one long context from padding the whole batch.
    """
    b, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    group = _check_gqa(hq, hkv)
    if b == 0:
        return q.new_empty(q.shape)
    lens_list = context_lens.tolist()
    out = torch.empty_like(q)
    for members in _length_groups(lens_list, _DECODE_GATHER_ELEMS // (hkv * d)):
        idx = torch.tensor(members, dtype=torch.int64, device=q.device)
        lens = torch.tensor([lens_list[i] for i in members], dtype=torch.int64, device=q.device)
        max_len = max(lens_list[i] for i in members)
        nblk = -(-max_len // bs)
        tables = block_tables.index_select(0, idx)[:, :nblk].to(torch.int64)
        # Entries past a sequence's own blocks may be garbage: point them at block 0 (masked anyway).
        used = torch.arange(nblk, device=q.device)[None, :] < (-(-lens // bs))[:, None]
        tables = torch.where(used, tables, torch.zeros_like(tables))
        n = len(members)
        k = _gather_tokens(k_cache, tables, max_len, workspace, "k").permute(0, 2, 1, 3)
        v = _gather_tokens(v_cache, tables, max_len, workspace, "v").permute(0, 2, 1, 3)
        qg = q.index_select(0, idx).reshape(n, hkv, group, d)
        keep = torch.arange(max_len, device=q.device)[None, :] < lens[:, None]
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=keep[:, None, None, :], scale=scale)
        out.index_copy_(0, idx, o.reshape(n, hq, d).to(q.dtype))
    return out


_PAD_SLACK = 1.5


def _length_groups(lens: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by ascending length; a group closes when padding it to its longest member
    would exceed ``_PAD_SLACK`` x its real tokens, or when it would pass ``max_tokens`` padded."""
    order = sorted(range(len(lens)), key=lens.__getitem__)
    groups, current, real = [], [], 0
    for i in order:
        padded = lens[i] * (len(current) + 1)
        if current and (padded > _PAD_SLACK * (real + lens[i]) or padded > max_tokens):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lens[i]
    groups.append(current)
    return groups


def paged_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Causal attention for a batch of query chunks sitting on top of their paged caches.

    Args:
        q: ``[T, Hq, D]``, the concatenation of S chunks.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]``; each chunk's KV is already
            written.
        block_tables: int32 ``[S, max_blocks]``.
        query_start_loc: int32 ``[S + 1]``, cumulative chunk offsets into ``q``
            (``query_start_loc[0] == 0``, ``query_start_loc[S] == T``).
        context_lens: int32 ``[S]``, tokens in the cache for sequence ``s`` INCLUDING its chunk.
        scale: softmax scale.
        workspace: optional scratch buffers reused across calls (see ``Workspace``).

    Returns:
        ``[T, Hq, D]`` in ``q.dtype``.

    Rule: query ``i`` of chunk ``s`` (``q_len = qsl[s+1] - qsl[s]``) sits at absolute
    position ``p = context_lens[s] - q_len + i`` and attends to keys ``0..p``::

        keys   0 1 2 3 4 5        context_len = 6, q_len = 3 (cached prefix of 3)
        q0     x x x x . .        p = 3
        q1     x x x x x .        p = 4
        q2     x x x x x x        p = 5
    """
    t, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    group = _check_gqa(hq, hkv)
    starts = query_start_loc.tolist()
    ctxs = context_lens.tolist()
    if len(starts) != len(ctxs) + 1:
        raise ValueError(f"query_start_loc has {len(starts)} entries for {len(ctxs)} sequences")
    out = torch.empty_like(q)
    for s, ctx in enumerate(ctxs):
        lo, hi = starts[s], starts[s + 1]
        q_len = hi - lo
        if q_len == 0:
            continue
        if not 0 < q_len <= ctx:
            raise ValueError(f"sequence {s}: q_len={q_len} must be in [1, context_len={ctx}]")
        tables = block_tables[s : s + 1, : -(-ctx // bs)].to(torch.int64)
        k = _gather_tokens(k_cache, tables, ctx, workspace, "k")[0].transpose(0, 1)  # [Hkv, ctx, D]
        v = _gather_tokens(v_cache, tables, ctx, workspace, "v")[0].transpose(0, 1)
        if q_len == ctx:
            # No cached prefix: plain causal attention, which SDPA runs as a fused flash kernel.
            # K/V are expanded to the query heads ([Hq, ctx, D]); q is [Hq, q_len, D].
            qs = q[lo:hi].transpose(0, 1)
            k = k.repeat_interleave(group, dim=0) if group > 1 else k
            v = v.repeat_interleave(group, dim=0) if group > 1 else v
            # 4-D inputs: SDPA's fused CPU kernel only takes [B, H, L, D] (3-D falls back to math).
            o = F.scaled_dot_product_attention(qs[None], k[None], v[None], is_causal=True, scale=scale)[0]
            out[lo:hi] = o.transpose(0, 1).to(q.dtype)
            continue
        # [q_len, Hq, D] -> [Hkv, group * q_len, D]; row g * q_len + i is query i of head g.
        qs = q[lo:hi].reshape(q_len, hkv, group, d).permute(1, 2, 0, 3).reshape(hkv, -1, d)
        keep = torch.ones(q_len, ctx, dtype=torch.bool, device=q.device).tril(ctx - q_len)
        o = F.scaled_dot_product_attention(qs[None], k[None], v[None], attn_mask=keep.repeat(group, 1),
                                           scale=scale)[0]
        out[lo:hi] = o.view(hkv, group, q_len, d).permute(2, 0, 1, 3).reshape(q_len, hq, d).to(q.dtype)
    return out
