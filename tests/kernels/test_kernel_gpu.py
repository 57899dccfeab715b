"""Real CUDA launches of the Triton kernels at serving shapes, checked against the reference.

Shapes of a Llama-style 8B layer: Hq=32, Hkv=8, head_dim=128, block_size=16, contexts to 4k.
"""

import pytest
import torch

from kernels.attention_ref import paged_decode_attention_ref, paged_prefill_attention_ref
from kernels.kv_ops_ref import gather_blocks_ref, scatter_blocks_ref, write_kv_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

HQ, HKV, D, BS = 32, 8, 128, 16
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _paged(context_lens, dtype, seed=0):
    """Random caches and disjoint, shuffled block tables for ``context_lens`` on CUDA."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    needed = [-(-c // BS) for c in context_lens]
    num_blocks = sum(needed) + 64
    k = torch.randn(num_blocks, BS, HKV, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(num_blocks, BS, HKV, D, device="cuda", generator=gen).to(dtype)
    order = torch.randperm(num_blocks, device="cuda", generator=gen)
    tables = torch.zeros(len(context_lens), max(needed), dtype=torch.int32, device="cuda")
    start = 0
    for s, n in enumerate(needed):
        tables[s, :n] = order[start : start + n].to(torch.int32)
        start += n
    lens = torch.tensor(context_lens, dtype=torch.int32, device="cuda")
    return k, v, tables, lens


@pytest.mark.parametrize("dtype", list(TOL))
def test_decode_at_serving_shapes(triton_ops, dtype):
    attention, _ = triton_ops
    k, v, tables, lens = _paged([1, 17, 255, 1000, 2049, 3001, 4096, 4095], dtype)
    q = torch.randn(len(lens), HQ, D, device="cuda").to(dtype)
    args = (q, k, v, tables, lens, D**-0.5)
    out = attention.paged_decode_attention_triton(*args)
    torch.testing.assert_close(out.float(), paged_decode_attention_ref(*args).float(),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL))
def test_prefill_at_serving_shapes(triton_ops, dtype):
    attention, _ = triton_ops
    q_lens, ctxs = [512, 1, 300, 77, 1024], [512, 4096, 1000, 2000, 4000]
    k, v, tables, lens = _paged(ctxs, dtype)
    q = torch.randn(sum(q_lens), HQ, D, device="cuda").to(dtype)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    args = (q, k, v, tables, qsl, lens, D**-0.5)
    out = attention.paged_prefill_attention_triton(*args)
    torch.testing.assert_close(out.float(), paged_prefill_attention_ref(*args).float(),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kv_ops_at_serving_shapes(triton_ops, dtype):
    _, kv_ops = triton_ops
    kv = torch.randn(4, 2, 512, BS, HKV, D, device="cuda").to(dtype)
    ids = torch.randperm(512, device="cuda")[:100]
    gathered = kv_ops.gather_blocks_triton(kv, ids)
    assert torch.equal(gathered, gather_blocks_ref(kv, ids))

    buffer = torch.randn_like(gathered)
    expected = kv.clone()
    scatter_blocks_ref(buffer, expected, ids)
    kv_ops.scatter_blocks_triton(buffer, kv, ids)
    assert torch.equal(kv, expected)

    key, value = torch.randn(2, 300, HKV, D, device="cuda").to(dtype)
    slots = torch.randperm(512 * BS, device="cuda")[:300]
    expected = kv[0].clone()
    write_kv_ref(key, value, expected[0], expected[1], slots)
    kv_ops.write_kv_triton(key, value, kv[0, 0], kv[0, 1], slots)
    assert torch.equal(kv[0], expected)
