"""KV-cache data movement as Triton kernels: twins of ``kernels.kv_ops_ref`` (same contracts).

``write_kv_triton`` copies one token's ``[Hkv, D]`` row per program. The block copies view
the all-layer cache as ``[L * 2, num_blocks, block_size * Hkv * D]`` and copy one whole block
of one (layer, K|V) plane per program, ``CHUNK`` elements at a time. Offsets are int64, so
caches past 2**31 elements are fine.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import interpreter_enabled

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CHUNK = 1024


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_key, stride_value, ROW: tl.constexpr, CHUNK: tl.constexpr,
):
    """Program (token, chunk): ROW = Hkv * D contiguous elements per token."""
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + tok)
    if slot < 0:
        return
    offs = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    mask = offs < ROW
    k = tl.load(key_ptr + tok * stride_key + offs, mask=mask)
    v = tl.load(value_ptr + tok * stride_value + offs, mask=mask)
    tl.store(k_cache_ptr + slot * ROW + offs, k, mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, v, mask=mask)


@triton.jit
def _copy_blocks_kernel(
    src_ptr, dst_ptr, ids_ptr, src_planes_stride, dst_planes_stride,
    BLOCK_ELEMS: tl.constexpr, CHUNK: tl.constexpr, GATHER: tl.constexpr,
):
    """Program (plane, i): plane = layer * 2 + (0 K | 1 V), i indexes block_ids.

    GATHER: dst[plane, i] = src[plane, ids[i]];  else (scatter): dst[plane, ids[i]] = src[plane, i].
    """
    plane = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64)
    block = tl.load(ids_ptr + i).to(tl.int64)
    if GATHER:
        src = src_ptr + plane * src_planes_stride + block * BLOCK_ELEMS
        dst = dst_ptr + plane * dst_planes_stride + i * BLOCK_ELEMS
    else:
        src = src_ptr + plane * src_planes_stride + i * BLOCK_ELEMS
        dst = dst_ptr + plane * dst_planes_stride + block * BLOCK_ELEMS
    for start in range(0, BLOCK_ELEMS, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        mask = offs < BLOCK_ELEMS
        tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


def _check_device(*tensors: torch.Tensor) -> None:
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise ValueError(f"all tensors must be on one device, got {[str(t.device) for t in tensors]}")
    if device.type != "cuda" and not interpreter_enabled():
        raise ValueError(f"Triton on {device} needs TRITON_INTERPRET=1 set before importing triton")


def _check_ids(block_ids: torch.Tensor) -> None:
    if block_ids.dtype != torch.int64 or block_ids.dim() != 1 or not block_ids.is_contiguous():
        raise ValueError(f"block_ids must be a contiguous 1-D int64 tensor, "
                         f"got {block_ids.dtype} shape {tuple(block_ids.shape)}")


def _check_kv(kv: torch.Tensor, name: str) -> None:
    if kv.dim() != 6 or kv.shape[1] != 2:
        raise ValueError(f"{name} must be [L, 2, blocks, block_size, Hkv, D], got {tuple(kv.shape)}")
    if kv.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} dtype {kv.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if not kv.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def write_kv_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Triton twin of ``kv_ops_ref.write_kv_ref``.

    ``key``/``value`` may be strided along tokens (e.g. slices of a fused qkv output) but each
    token's ``[Hkv, D]`` must be contiguous; the caches must be contiguous.
    """
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache and v_cache must both be [num_blocks, block_size, Hkv, D], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    hkv, d = k_cache.shape[2:]
    t = slot_mapping.shape[0]
    for name, x in (("key", key), ("value", value)):
        if tuple(x.shape) != (t, hkv, d):
            raise ValueError(f"{name} must be [{t}, {hkv}, {d}] to match slot_mapping and the "
                             f"cache, got {tuple(x.shape)}")
        if x.dtype != k_cache.dtype:
            raise ValueError(f"{name} dtype {x.dtype} != cache dtype {k_cache.dtype}")
        if t > 0 and not x[0].is_contiguous():
            raise ValueError(f"{name} must be contiguous within each token's [Hkv, D]")
    if k_cache.dtype not in SUPPORTED_DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"cache dtypes {k_cache.dtype}/{v_cache.dtype} must be one of {SUPPORTED_DTYPES}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    if slot_mapping.dtype != torch.int64 or slot_mapping.dim() != 1 or not slot_mapping.is_contiguous():
        raise ValueError(f"slot_mapping must be a contiguous 1-D int64 tensor, "
                         f"got {slot_mapping.dtype} shape {tuple(slot_mapping.shape)}")
    _check_device(key, value, k_cache, v_cache, slot_mapping)
    if t == 0:
        return
    row = hkv * d
    chunk = min(_CHUNK, triton.next_power_of_2(row))
    _write_kv_kernel[(t, triton.cdiv(row, chunk))](
        key, value, k_cache, v_cache, slot_mapping, key.stride(0), value.stride(0),
        ROW=row, CHUNK=chunk,
    )


def _copy_blocks(src: torch.Tensor, dst: torch.Tensor, block_ids: torch.Tensor, gather: bool) -> None:
    n = block_ids.shape[0]
    planes = src.shape[0] * 2
    block_elems = math.prod(src.shape[3:])
    if n == 0 or planes == 0 or block_elems == 0:
        return
    chunk = min(_CHUNK, triton.next_power_of_2(block_elems))
    _copy_blocks_kernel[(planes, n)](
        src, dst, block_ids, src.stride(1), dst.stride(1),
        BLOCK_ELEMS=block_elems, CHUNK=chunk, GATHER=gather,
    )


def gather_blocks_triton(kv: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Triton twin of ``kv_ops_ref.gather_blocks_ref``; returns a new contiguous buffer."""
    _check_kv(kv, "kv")
    _check_ids(block_ids)
    _check_device(kv, block_ids)
    out = kv.new_empty((kv.shape[0], 2, block_ids.shape[0], *kv.shape[3:]))
    _copy_blocks(kv, out, block_ids, gather=True)
    return out


def scatter_blocks_triton(buffer: torch.Tensor, kv: torch.Tensor, block_ids: torch.Tensor) -> None:
    """Triton twin of ``kv_ops_ref.scatter_blocks_ref``; writes ``kv`` in place."""
    _check_kv(kv, "kv")
    _check_kv(buffer, "buffer")
    _check_ids(block_ids)
    expected = (kv.shape[0], 2, block_ids.shape[0], *kv.shape[3:])
    if tuple(buffer.shape) != expected:
        raise ValueError(f"buffer must be {expected} for {block_ids.shape[0]} blocks, "
                         f"got {tuple(buffer.shape)}")
    if buffer.dtype != kv.dtype:
        raise ValueError(f"buffer dtype {buffer.dtype} != kv dtype {kv.dtype}")
    _check_device(buffer, kv, block_ids)
    _copy_blocks(buffer, kv, block_ids, gather=False)
