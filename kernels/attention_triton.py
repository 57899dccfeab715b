"""Paged decode and chunked-prefill attention as Triton kernels.

Same signatures and contracts as ``kernels.attention_ref`` (the tests hold them to it); read
those docstrings for shapes. Both kernels walk a sequence's keys ``BLOCK_N`` tokens at a time,
look each token's cache block up in ``block_tables`` (so any cache block size works), and keep
an online softmax in float32::

    m_new = max(m, rowmax(s));  p = exp(s - m_new);  alpha = exp(m - m_new)
    l = l * alpha + rowsum(p);  acc = acc * alpha + p @ V;  m = m_new;  out = acc / l

Scores are kept in base 2 (``scale * log2(e)`` is folded into q) so ``exp2`` does the work.
The wrappers allocate the output; the caches and tables are only read.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import interpreter_enabled

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2E = math.log2(math.e)


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, qk_scale,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_kb, stride_kt, stride_kh, stride_tb,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program (seq, kv_head): the GROUP query heads sharing that kv head, all keys."""
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    ctx = tl.load(lens_ptr + seq)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < HEAD_DIM
    mask_qd = (offs_g < GROUP)[:, None] & mask_d[None, :]
    heads = kvh * GROUP + offs_g
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_qd, other=0.0).to(tl.float32) * qk_scale
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    for start in range(0, ctx, BLOCK_N):
        tok = start + offs_n
        mask_n = tok < ctx
        block = tl.load(tables_ptr + seq * stride_tb + tok // BLOCK_SIZE, mask=mask_n, other=0)
        row = block.to(tl.int64) * stride_kb + (tok % BLOCK_SIZE) * stride_kt + kvh * stride_kh
        mask_kv = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=mask_kv, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GROUP_PAD, BLOCK_N]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=mask_kv, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_qd)


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, qsl_ptr, lens_ptr, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_kb, stride_kt, stride_kh, stride_tb,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Program (seq, q_head, query tile): BLOCK_M queries against keys up to their causal limit."""
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    m_start = tl.program_id(2) * BLOCK_M
    q_begin = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_begin
    if m_start >= q_len:
        return
    ctx = tl.load(lens_ptr + seq)
    kvh = head // GROUP
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < HEAD_DIM
    mask_qd = (offs_m < q_len)[:, None] & mask_d[None, :]
    pos = ctx - q_len + offs_m  # absolute position of each query
    q_rows = (q_begin + offs_m).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=mask_qd, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    kv_end = tl.minimum(ctx, ctx - q_len + m_start + BLOCK_M)  # last query of the tile + 1
    for start in range(0, kv_end, BLOCK_N):
        tok = start + offs_n
        mask_n = tok < kv_end
        block = tl.load(tables_ptr + seq * stride_tb + tok // BLOCK_SIZE, mask=mask_n, other=0)
        row = block.to(tl.int64) * stride_kb + (tok % BLOCK_SIZE) * stride_kt + kvh * stride_kh
        mask_kv = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=mask_kv, other=0.0)
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=mask_kv, other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where((tok[None, :] <= pos[:, None]) & mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_qd)


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  int_tensors: dict[str, tuple[torch.Tensor, int]]) -> tuple[int, int, int]:
    """Validate q, the caches and the int32 tables; returns (block_size, Hkv, group)."""
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D [tokens, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache and v_cache must both be [num_blocks, block_size, Hkv, D], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q dtype {q.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"cache dtypes {k_cache.dtype}/{v_cache.dtype} must match q dtype {q.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    if q.stride(-1) != 1:
        raise ValueError("q must be contiguous along head_dim (stride(-1) == 1)")
    _, block_size, hkv, d = k_cache.shape
    if q.shape[2] != d:
        raise ValueError(f"q head_dim {q.shape[2]} != cache head_dim {d}")
    if q.shape[1] % hkv != 0:
        raise ValueError(f"num_q_heads={q.shape[1]} is not a multiple of num_kv_heads={hkv}")
    for name, (t, ndim) in int_tensors.items():
        if t.dtype != torch.int32 or t.dim() != ndim or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {ndim}-D int32 tensor, "
                             f"got {t.dtype} shape {tuple(t.shape)}")
    others = {"k_cache": k_cache, "v_cache": v_cache, **{n: t for n, (t, _) in int_tensors.items()}}
    for name, t in others.items():
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if q.device.type != "cuda" and not interpreter_enabled():
        raise ValueError(f"Triton on {q.device} needs TRITON_INTERPRET=1 set before importing triton")
    return block_size, hkv, q.shape[1] // hkv


def paged_decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Triton twin of ``attention_ref.paged_decode_attention_ref`` (same contract)."""
    block_size, hkv, group = _check_inputs(
        q, k_cache, v_cache, {"block_tables": (block_tables, 2), "context_lens": (context_lens, 1)})
    b, _, d = q.shape
    if block_tables.shape[0] != b or context_lens.shape[0] != b:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and context_lens "
                         f"{tuple(context_lens.shape)} must have {b} rows like q")
    out = torch.empty((b, q.shape[1], d), dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    group_pad = max(2, triton.next_power_of_2(group))
    d_pad = max(16, triton.next_power_of_2(d))
    block_n = max(4, min(64, 8192 // (group_pad * d_pad)))
    _decode_kernel[(b, hkv)](
        q, k_cache, v_cache, out, block_tables, context_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=d, D_PAD=d_pad,
        BLOCK_N=block_n, num_warps=4,
    )
    return out


def paged_prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Triton twin of ``attention_ref.paged_prefill_attention_ref`` (same contract).

    Reads ``query_start_loc`` once on the host to size the grid (one device sync).
    """
    block_size, _, group = _check_inputs(q, k_cache, v_cache, {
        "block_tables": (block_tables, 2), "query_start_loc": (query_start_loc, 1),
        "context_lens": (context_lens, 1)})
    num_seqs = context_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1 or block_tables.shape[0] != num_seqs:
        raise ValueError(f"{num_seqs} sequences need query_start_loc of {num_seqs + 1} entries and "
                         f"{num_seqs} block_tables rows, got {query_start_loc.shape[0]} and "
                         f"{block_tables.shape[0]}")
    t, hq, d = q.shape
    out = torch.empty((t, hq, d), dtype=q.dtype, device=q.device)
    if t == 0 or num_seqs == 0:
        return out
    max_q_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    d_pad = max(16, triton.next_power_of_2(d))
    block_m = max(16, min(64, triton.next_power_of_2(max_q_len)))
    block_n = 64 if q.element_size() <= 2 and d_pad <= 128 else 32
    # The interpreter multiplies bf16 dot operands as raw uint16 bits: upcast them there.
    upcast = q.dtype == torch.bfloat16 and (q.device.type != "cuda" or interpreter_enabled())
    precision = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    grid = (num_seqs, hq, triton.cdiv(max_q_len, block_m))
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        BLOCK_SIZE=block_size, GROUP=group, HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=block_m,
        BLOCK_N=block_n, UPCAST_DOT=upcast, DOT_PRECISION=precision, num_warps=4, num_stages=2,
    )
    return out
