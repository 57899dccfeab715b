"""The engine's forward over the paged cache equals transformers' forward (float32, 1e-4)."""

import pytest
import torch

from engine.sampling import SamplingParams
from tests.engine.helpers import make_engine, step_with_logits
from tests.tiny_models import reference_model

ATOL = 1e-4
GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)


def _prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 384, (length,), generator=g).tolist()


def _reference_last_logits(ref, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0, -1].float()


@pytest.fixture(params=["llama_dir", "qwen2_dir", "llama3_rope_dir", "mistral_dir"])
def model_dir(request):
    return request.getfixturevalue(request.param)


def test_full_prefill_matches_reference(model_dir):
    engine, ref = make_engine(model_dir), reference_model(model_dir)
    ids = _prompt(45, 0)
    engine.add_request(ids, GREEDY, request_id="a")
    logits = step_with_logits(engine)
    torch.testing.assert_close(logits["a"], _reference_last_logits(ref, ids), atol=ATOL, rtol=0)


def test_chunked_prefill_in_three_chunks_matches_reference(model_dir):
    engine, ref = make_engine(model_dir, max_num_batched_tokens=20), reference_model(model_dir)
    ids = _prompt(53, 1)
    engine.add_request(ids, GREEDY, request_id="a")
    assert step_with_logits(engine) == {}      # tokens 0-19
    assert step_with_logits(engine) == {}      # tokens 20-39
    logits = step_with_logits(engine)          # tokens 40-52
    torch.testing.assert_close(logits["a"], _reference_last_logits(ref, ids), atol=ATOL, rtol=0)


def test_twenty_batched_decode_steps_match_reference(model_dir):
    engine, ref = make_engine(model_dir), reference_model(model_dir)
    prompts = {f"s{i}": _prompt(n, 10 + i) for i, n in enumerate([5, 17, 33, 64])}
    for rid, ids in prompts.items():
        engine.add_request(ids, GREEDY, request_id=rid)
    seqs = {rid: list(ids) for rid, ids in prompts.items()}
    for step in range(21):  # one prefill step, then 20 decode steps
        logits = step_with_logits(engine)
        assert set(logits) == set(prompts), f"step {step}: every sequence samples"
        for rid, row in logits.items():
            torch.testing.assert_close(row, _reference_last_logits(ref, seqs[rid]), atol=ATOL, rtol=0,
                                       msg=lambda m: f"step {step} seq {rid}: {m}")
            seqs[rid].append(int(row.argmax()))


def test_mixed_batch_of_decodes_and_prefill_chunks_matches_reference(llama_dir):
    engine, ref = make_engine(llama_dir, max_num_batched_tokens=24), reference_model(llama_dir)
    engine.add_request(_prompt(10, 3), GREEDY, request_id="early")
    step_with_logits(engine)
    engine.add_request(_prompt(40, 4), GREEDY, request_id="late")
    seen = step_with_logits(engine)  # decode of "early" + first chunk of "late"
    assert set(seen) == {"early"}
    for _ in range(3):
        logits = step_with_logits(engine)
        for rid, row in logits.items():
            seq = engine._seqs[rid]
            torch.testing.assert_close(row, _reference_last_logits(ref, seq.token_ids[:-1]), atol=ATOL, rtol=0)
