"""The Triton paged attention kernels agree with the torch reference (interpreter on CPU)."""

import pytest
import torch

from kernels.attention_ref import paged_decode_attention_ref, paged_prefill_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}
DTYPE_IDS = [str(d).removeprefix("torch.") for d in TOL]
# (Hq, Hkv, head_dim, block_size): GQA 4:2 with a power-of-two dim; GQA 6:2 (a group of 3,
# padded to 4) with a padded head_dim (24) and a block size that is not a power of two; MHA.
SHAPES = [(4, 2, 32, 16), (6, 2, 24, 6), (2, 2, 16, 4)]


def _close(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS)
@pytest.mark.parametrize("hq,hkv,d,bs", SHAPES)
def test_decode_matches_reference(kit, triton_ops, dtype, hq, hkv, d, bs):
    attention, _ = triton_ops
    lens = [1, 7, 16, 45]
    paged = kit.make_paged_kv(lens, hkv, d, bs, dtype=dtype, device=DEVICE, table_fill=-5)
    q = torch.randn(len(lens), hq, d, device=DEVICE).to(dtype)
    args = (q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, d**-0.5)
    _close(attention.paged_decode_attention_triton(*args), paged_decode_attention_ref(*args), dtype)


@pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS)
@pytest.mark.parametrize("hq,hkv,d,bs", SHAPES)
def test_prefill_matches_reference(kit, triton_ops, dtype, hq, hkv, d, bs):
    attention, _ = triton_ops
    # fresh prompt longer than one query tile | chunk on a cached prefix | q_len=1 | 1-token seq
    lens, q_lens = [21, 40, 19, 1], [21, 9, 1, 1]
    paged = kit.make_paged_kv(lens, hkv, d, bs, dtype=dtype, device=DEVICE)
    q = torch.randn(sum(q_lens), hq, d, device=DEVICE).to(dtype)
    args = (q, paged.k_cache, paged.v_cache, paged.block_tables,
            kit.query_start_loc(q_lens, DEVICE), paged.context_lens, d**-0.5)
    _close(attention.paged_prefill_attention_triton(*args), paged_prefill_attention_ref(*args), dtype)


def test_prefill_spans_several_query_tiles(kit, triton_ops):
    attention, _ = triton_ops
    lens, q_lens = [75, 140, 3], [75, 70, 2]  # more than one 64-query tile for two sequences
    paged = kit.make_paged_kv(lens, 2, 16, 16, device=DEVICE)
    q = torch.randn(sum(q_lens), 4, 16, device=DEVICE)
    args = (q, paged.k_cache, paged.v_cache, paged.block_tables,
            kit.query_start_loc(q_lens, DEVICE), paged.context_lens, 0.25)
    _close(attention.paged_prefill_attention_triton(*args), paged_prefill_attention_ref(*args), torch.float32)


def test_prefill_reads_strided_queries(kit, triton_ops):
    attention, _ = triton_ops
    paged = kit.make_paged_kv([12, 5], 2, 16, 4, device=DEVICE)
    qkv = torch.randn(8, 3, 4, 16, device=DEVICE)  # a fused projection output
    q = qkv[:, 0]
    assert not q.is_contiguous()
    args = (q, paged.k_cache, paged.v_cache, paged.block_tables,
            kit.query_start_loc([3, 5], DEVICE), paged.context_lens, 0.25)
    _close(attention.paged_prefill_attention_triton(*args), paged_prefill_attention_ref(*args), torch.float32)


def _decode_args(kit, **overrides):
    paged = kit.make_paged_kv([5, 9], 2, 16, 4, device=DEVICE)
    args = dict(q=torch.randn(2, 4, 16, device=DEVICE), k_cache=paged.k_cache, v_cache=paged.v_cache,
                block_tables=paged.block_tables, context_lens=paged.context_lens, scale=0.25)
    args.update(overrides)
    return args


@pytest.mark.parametrize("bad,match", [
    (lambda a: {"block_tables": a["block_tables"].long()}, "block_tables must be a contiguous 2-D int32"),
    (lambda a: {"context_lens": a["context_lens"].float()}, "context_lens must be"),
    (lambda a: {"q": a["q"].half()}, "must match q dtype"),
    (lambda a: {"q": a["q"].double(), "k_cache": a["k_cache"].double(),
                "v_cache": a["v_cache"].double()}, "not supported"),
    (lambda a: {"k_cache": a["k_cache"].transpose(1, 2)}, "k_cache and v_cache must both be|contiguous"),
    (lambda a: {"q": a["q"][..., :8]}, "head_dim"),
    (lambda a: {"q": torch.randn(2, 3, 16, device=DEVICE)}, "multiple of num_kv_heads"),
    (lambda a: {"context_lens": a["context_lens"][:1]}, "must have 2 rows"),
])
def test_decode_wrapper_rejects_bad_inputs(kit, triton_ops, bad, match):
    attention, _ = triton_ops
    args = _decode_args(kit)
    args.update(bad(args))
    with pytest.raises(ValueError, match=match):
        attention.paged_decode_attention_triton(**args)


def test_prefill_wrapper_rejects_mismatched_query_start_loc(kit, triton_ops):
    attention, _ = triton_ops
    paged = kit.make_paged_kv([5, 9], 2, 16, 4, device=DEVICE)
    with pytest.raises(ValueError, match="query_start_loc of 3 entries"):
        attention.paged_prefill_attention_triton(
            torch.randn(4, 4, 16, device=DEVICE), paged.k_cache, paged.v_cache, paged.block_tables,
            kit.query_start_loc([4], DEVICE), paged.context_lens, 0.25)
