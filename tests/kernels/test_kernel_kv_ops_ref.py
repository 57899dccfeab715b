"""The torch KV-cache ops put every element where the layout says and touch nothing else."""

import torch

from kernels.kv_ops_ref import gather_blocks_ref, scatter_blocks_ref, write_kv_ref


def test_write_kv_stores_each_token_at_its_slot():
    k_cache, v_cache = torch.zeros(6, 4, 2, 8), torch.zeros(6, 4, 2, 8)
    key, value = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    slots = torch.tensor([5 * 4 + 3, 0, 2 * 4 + 1])
    write_kv_ref(key, value, k_cache, v_cache, slots)
    for t, (block, off) in enumerate([(5, 3), (0, 0), (2, 1)]):
        assert torch.equal(k_cache[block, off], key[t]) and torch.equal(v_cache[block, off], value[t])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 3


def test_write_kv_skips_negative_slots():
    k_cache, v_cache = torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8)
    write_kv_ref(torch.ones(2, 1, 8), torch.ones(2, 1, 8), k_cache, v_cache, torch.tensor([-1, 6]))
    assert k_cache.sum() == 8 and torch.equal(k_cache[1, 2], torch.ones(1, 8))
    assert v_cache.sum() == 8


def test_gather_blocks_packs_the_chosen_blocks_of_every_layer():
    kv = torch.randn(3, 2, 7, 4, 2, 8)
    ids = torch.tensor([6, 1, 3])
    out = gather_blocks_ref(kv, ids)
    assert out.shape == (3, 2, 3, 4, 2, 8) and out.is_contiguous()
    for i, block in enumerate(ids.tolist()):
        assert torch.equal(out[:, :, i], kv[:, :, block])


def test_scatter_blocks_inverts_gather_and_leaves_other_blocks_alone():
    kv = torch.randn(2, 2, 6, 4, 1, 8)
    ids = torch.tensor([4, 0])
    buffer = torch.randn(2, 2, 2, 4, 1, 8)
    before = kv.clone()
    scatter_blocks_ref(buffer, kv, ids)
    assert torch.equal(gather_blocks_ref(kv, ids), buffer)
    untouched = [1, 2, 3, 5]
    assert torch.equal(kv[:, :, untouched], before[:, :, untouched])
