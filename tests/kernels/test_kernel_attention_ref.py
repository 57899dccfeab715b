"""The torch paged attention equals naive dense attention over the same tokens."""

import pytest
import torch

from kernels.attention_ref import paged_decode_attention_ref, paged_prefill_attention_ref

HEADS = [(4, 2), (8, 2), (6, 2)]  # (Hq, Hkv); 6:2 has a group of 3


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("block_size", [4, 16])
def test_decode_matches_dense_attention(kit, hq, hkv, block_size):
    lens = [1, 5, 17, 33, 50]
    paged = kit.make_paged_kv(lens, hkv, 16, block_size)
    q = torch.randn(len(lens), hq, 16)
    out = paged_decode_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                     paged.context_lens, 0.25)
    torch.testing.assert_close(out, kit.naive_decode(q, paged, 0.25).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fill", [0, 10_000, -1])
def test_decode_ignores_table_entries_past_the_context(kit, fill):
    paged = kit.make_paged_kv([3, 20, 9], 2, 16, 4, table_fill=fill)
    q = torch.randn(3, 4, 16)
    out = paged_decode_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                     paged.context_lens, 0.25)
    torch.testing.assert_close(out, kit.naive_decode(q, paged, 0.25).float(), atol=1e-5, rtol=1e-5)


def test_decode_keeps_query_dtype(kit):
    paged = kit.make_paged_kv([7, 12], 2, 16, 4, dtype=torch.bfloat16)
    q = torch.randn(2, 4, 16, dtype=torch.bfloat16)
    out = paged_decode_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                     paged.context_lens, 0.25)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out.float(), kit.naive_decode(q, paged, 0.25).float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("block_size", [4, 16])
def test_prefill_matches_dense_causal_attention(kit, hq, hkv, block_size):
    # fresh prompt | chunk on top of a cached prefix | single token (decode-like) | 1-token seq
    lens, q_lens = [13, 37, 22, 1], [13, 10, 1, 1]
    paged = kit.make_paged_kv(lens, hkv, 16, block_size)
    q = torch.randn(sum(q_lens), hq, 16)
    out = paged_prefill_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                      kit.query_start_loc(q_lens), paged.context_lens, 0.3)
    torch.testing.assert_close(out, kit.naive_prefill(q, paged, q_lens, 0.3).float(), atol=1e-5, rtol=1e-5)


def test_prefill_of_single_tokens_equals_decode(kit):
    paged = kit.make_paged_kv([9, 1, 30], 2, 16, 8)
    q = torch.randn(3, 8, 16)
    prefill = paged_prefill_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                          kit.query_start_loc([1, 1, 1]), paged.context_lens, 0.25)
    decode = paged_decode_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                        paged.context_lens, 0.25)
    torch.testing.assert_close(prefill, decode, atol=1e-6, rtol=1e-6)


def test_prefill_rejects_chunk_longer_than_context(kit):
    paged = kit.make_paged_kv([4], 2, 16, 4)
    q = torch.randn(5, 4, 16)
    with pytest.raises(ValueError, match="q_len=5"):
        paged_prefill_attention_ref(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                    kit.query_start_loc([5]), paged.context_lens, 0.25)
