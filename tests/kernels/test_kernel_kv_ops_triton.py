"""The Triton KV-cache ops produce exactly what the torch reference produces."""

import pytest
import torch

from kernels.kv_ops_ref import gather_blocks_ref, scatter_blocks_ref, write_kv_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]
# (num_blocks, block_size, Hkv, D); the second has more than one 1024-element chunk per row
# and per block, the third a row that is not a power of two.
SHAPES = [(6, 4, 2, 16), (5, 8, 4, 64), (4, 3, 3, 24)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("nb,bs,hkv,d", SHAPES)
def test_write_kv_matches_reference(triton_ops, dtype, nb, bs, hkv, d):
    _, kv_ops = triton_ops
    caches = [torch.randn(nb, bs, hkv, d, device=DEVICE).to(dtype) for _ in range(2)]
    expected = [c.clone() for c in caches]
    fused = torch.randn(5, 2, hkv, d, device=DEVICE).to(dtype)
    key, value = fused[:, 0], fused[:, 1]  # strided along tokens, like a split qkv output
    slots = torch.tensor([bs * nb - 1, 0, -1, bs + 1, 2 * bs], device=DEVICE)
    kv_ops.write_kv_triton(key, value, *caches, slots)
    write_kv_ref(key, value, *expected, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("nb,bs,hkv,d", SHAPES)
def test_gather_and_scatter_blocks_match_reference(triton_ops, dtype, nb, bs, hkv, d):
    _, kv_ops = triton_ops
    kv = torch.randn(3, 2, nb, bs, hkv, d, device=DEVICE).to(dtype)
    ids = torch.tensor([nb - 1, 0, 2], device=DEVICE)
    gathered = kv_ops.gather_blocks_triton(kv, ids)
    assert gathered.is_contiguous() and torch.equal(gathered, gather_blocks_ref(kv, ids))

    buffer = torch.randn_like(gathered)
    expected = kv.clone()
    scatter_blocks_ref(buffer, expected, ids)
    kv_ops.scatter_blocks_triton(buffer, kv, ids)
    assert torch.equal(kv, expected)


def test_empty_inputs_are_no_ops(triton_ops):
    _, kv_ops = triton_ops
    kv = torch.randn(2, 2, 3, 4, 1, 16, device=DEVICE)
    none = torch.empty(0, dtype=torch.int64, device=DEVICE)
    assert kv_ops.gather_blocks_triton(kv, none).shape == (2, 2, 0, 4, 1, 16)
    empty = torch.empty(0, 1, 16, device=DEVICE)
    kv_ops.write_kv_triton(empty, empty, kv[0, 0], kv[0, 1], none)


def test_write_kv_rejects_int32_slots(triton_ops):
    _, kv_ops = triton_ops
    cache = torch.zeros(2, 4, 1, 16, device=DEVICE)
    key = torch.zeros(2, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="slot_mapping must be a contiguous 1-D int64"):
        kv_ops.write_kv_triton(key, key, cache, cache.clone(), torch.tensor([0, 1], dtype=torch.int32))


def test_write_kv_rejects_dtype_mismatch(triton_ops):
    _, kv_ops = triton_ops
    cache = torch.zeros(2, 4, 1, 16, device=DEVICE, dtype=torch.float16)
    key = torch.zeros(2, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="key dtype"):
        kv_ops.write_kv_triton(key, key, cache, cache.clone(), torch.tensor([0, 1]))


def test_scatter_rejects_buffer_of_wrong_block_count(triton_ops):
    _, kv_ops = triton_ops
    kv = torch.zeros(1, 2, 4, 4, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="buffer must be"):
        kv_ops.scatter_blocks_triton(torch.zeros(1, 2, 3, 4, 1, 16, device=DEVICE), kv,
                                     torch.tensor([0, 1], device=DEVICE))


def test_gather_rejects_non_contiguous_cache(triton_ops):
    _, kv_ops = triton_ops
    kv = torch.zeros(1, 2, 4, 4, 16, 2, device=DEVICE).transpose(-1, -2)
    with pytest.raises(ValueError, match="kv must be contiguous"):
        kv_ops.gather_blocks_triton(kv, torch.tensor([0], device=DEVICE))
