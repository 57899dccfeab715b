"""Prefix caching, abort, preemption and the KV export/import handoff keep outputs exact."""

import torch

from engine.sampling import SamplingParams
from tests.engine.helpers import make_engine

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPT = list(range(3, 3 + 70))  # 70 tokens: four full blocks of 16 and a partial one


def test_prefix_cache_hit_gives_the_same_tokens_as_a_miss(llama_dir):
    cold = make_engine(llama_dir, enable_prefix_caching=False).generate([PROMPT], GREEDY)[0]
    engine = make_engine(llama_dir)
    first = engine.generate([PROMPT], GREEDY)[0]
    assert first.num_cached_tokens == 0
    second = engine.generate([PROMPT], GREEDY)[0]
    assert second.num_cached_tokens == 64
    assert engine.stats().prefix_cache_hits == 64
    assert first.output_token_ids == second.output_token_ids == cold.output_token_ids
    engine.block_manager.check_invariants()


def test_shared_prefix_with_a_different_tail_hits_only_the_shared_blocks(llama_dir):
    engine = make_engine(llama_dir)
    engine.generate([PROMPT], GREEDY)
    other = PROMPT[:40] + list(range(200, 230))
    out = engine.generate([other], GREEDY)[0]
    assert out.num_cached_tokens == 32
    ref = make_engine(llama_dir, enable_prefix_caching=False).generate([other], GREEDY)[0]
    assert out.output_token_ids == ref.output_token_ids


def test_abort_frees_every_block(llama_dir):
    engine = make_engine(llama_dir, enable_prefix_caching=False)
    rid = engine.add_request(PROMPT, GREEDY)
    engine.step()
    assert engine.block_manager.usage() > 0
    assert engine.abort(rid)
    assert engine.block_manager.usage() == 0 and not engine.has_unfinished()
    assert not engine.abort(rid)
    engine.block_manager.check_invariants()


def test_preemption_under_memory_pressure_keeps_outputs_exact(llama_dir):
    prompts = [list(range(3 + i, 3 + i + 30)) for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    roomy = make_engine(llama_dir).generate(prompts, params)
    tight = make_engine(llama_dir, num_blocks=12, enable_prefix_caching=False)
    squeezed = tight.generate(prompts, params, timeout_s=120)
    assert [o.output_token_ids for o in squeezed] == [o.output_token_ids for o in roomy]
    assert tight.stats().num_preemptions > 0
    tight.block_manager.check_invariants()
    assert tight.block_manager.usage() == 0


def test_kv_handoff_continues_decoding_on_another_engine(llama_dir):
    ref = make_engine(llama_dir).generate([PROMPT], GREEDY)[0]
    whole, whole_text = ref.output_token_ids, ref.text

    prefill = make_engine(llama_dir)
    rid = prefill.add_request(PROMPT, GREEDY)
    outs = prefill.step()
    first = outs[0].new_token_ids[0]
    handoff = prefill.export_kv(rid)
    assert handoff.meta.num_tokens == len(PROMPT) and handoff.meta.dtype == "float32"
    assert tuple(handoff.buffer.shape) == handoff.meta.shape and handoff.buffer.is_contiguous()
    prefill.abort(rid)

    decode = make_engine(llama_dir, num_blocks=64)
    decode.import_kv(handoff, PROMPT + [first], len(PROMPT), GREEDY)
    rest, texts = [], [outs[0].new_text]
    while decode.has_unfinished():
        for out in decode.step():
            rest.extend(out.new_token_ids)
            texts.append(out.new_text)
            final = out
    assert (first, *rest) == whole
    assert "".join(texts) == whole_text          # streamed text: each piece once, none lost
    assert final.output_token_ids == whole
    decode.block_manager.check_invariants()
    assert decode.block_manager.usage() == 0 or decode.config.enable_prefix_caching


def test_kv_export_import_round_trip_is_bit_exact(llama_dir):
    engine = make_engine(llama_dir)
    rid = engine.add_request(PROMPT, GREEDY)
    engine.step()
    handoff = engine.export_kv(rid)
    table = engine.block_manager.block_table(rid)[:5]
    expected = engine.kv_cache.tensor[:, :, table].clone()
    torch.testing.assert_close(handoff.buffer, expected, atol=0, rtol=0)


def test_a_parked_request_keeps_its_blocks_and_is_not_stepped(llama_dir):
    engine = make_engine(llama_dir, enable_prefix_caching=False)
    rid = engine.add_request(PROMPT, GREEDY)
    engine.step()
    used = engine.block_manager.usage()
    engine.park(rid)
    assert engine.has_request(rid) and not engine.has_unfinished() and engine.step() == []
    assert engine.block_manager.usage() == used
    engine.abort(rid)
    assert engine.block_manager.usage() == 0 and not engine.has_request(rid)


def test_imported_request_does_not_stream_the_senders_text_again(llama_dir):
    """The decode side releases only text after what the prefill side streamed (here a first
    token chosen to decode to plain text, so a repeat would show)."""
    from engine.detokenizer import IncrementalDetokenizer

    prefill = make_engine(llama_dir)
    rid = prefill.add_request(PROMPT, GREEDY)
    prefill.step()
    handoff = prefill.export_kv(rid)
    tok = prefill.tokenizer
    first = next(t for t in range(3, 384) if tok.decode([t]).strip().isalpha())
    sender = IncrementalDetokenizer(tok, list(PROMPT))
    sent = sender.add(first)
    assert sent                                     # the sender streamed this text already
    decode = make_engine(llama_dir, num_blocks=64)
    decode.import_kv(handoff, PROMPT + [first], len(PROMPT), GREEDY)
    texts, ids = [], []
    while decode.has_unfinished():
        for out in decode.step():
            texts.append(out.new_text)
            ids.extend(out.new_token_ids)
    for t in ids:
        sender.add(t)
    sender.flush()
    assert sent + "".join(texts) == sender.text
