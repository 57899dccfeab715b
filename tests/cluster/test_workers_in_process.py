"""Prefill worker → cpu_shm handoff → decode worker, driven in one process (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from decode_worker.worker import DecodeWorker
from prefill_worker.messages import sampling_params_from_dict
from prefill_worker.worker import PrefillWorker
from tests.cluster.conftest import PARAMS, make_prompts


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("tandem-kv-*")}


@pytest.fixture
def workers(engine_config):
    before = _segments()
    prefill, decode = PrefillWorker(engine_config), DecodeWorker(engine_config)
    yield prefill, decode
    prefill.close()
    decode.close()
    assert _segments() <= before, "leaked /dev/shm segments"


def test_handoff_in_process_matches_the_single_process_engine(workers, reference):
    prefill, decode = workers
    prompts, firsts = make_prompts(), {}
    for i, prompt in enumerate(prompts):
        res = prefill.prefill(f"r{i}", prompt, PARAMS)
        assert not res.finished and res.ticket is not None and res.ticket.request_id == f"r{i}"
        started = decode.start(res.ticket, prompt + [res.first_token], len(prompt), PARAMS)
        assert started.decision is None and started.pulls == 1, started
        firsts[f"r{i}"] = res.first_token
        prefill.check_invariants()
        decode.check_invariants()
    assert prefill.stats().num_parked <= len(prompts)
    got = decode.run_until_done(list(firsts), deadline_s=30)
    for i, expected in enumerate(reference):
        assert (firsts[f"r{i}"], *got[f"r{i}"]) == expected, f"prompt {i}"
    prefill.sweep(wait_s=5)
    for w in (prefill, decode):
        w.check_invariants()
        assert w.stats().kv_usage == 0
    assert prefill.stats().pending_transfers == 0 and prefill.stats().num_parked == 0


def test_parked_request_is_not_stepped_while_its_transfer_is_pending(workers):
    prefill, _ = workers
    res = prefill.prefill("a", list(range(3, 40)), PARAMS)
    prefill.prefill("b", list(range(5, 30)), PARAMS)
    assert prefill.stats().num_parked == 2 and prefill.stats().kv_usage > 0
    assert not prefill.engine.has_unfinished()           # nothing scheduled: parked requests sit still
    assert prefill.engine.block_manager.has_seq(res.request_id)


def test_one_token_request_finishes_on_prefill_without_a_handoff(workers):
    prefill, _ = workers
    res = prefill.prefill("one", [5, 6, 7, 8], {"temperature": 0, "max_tokens": 1})
    assert res.finished and res.ticket is None and res.prefill_seconds > 0
    prefill.check_invariants()
    assert prefill.stats().kv_usage == 0 and prefill.stats().pending_transfers == 0


def test_prefix_cache_hit_is_reported(workers):
    prefill, _ = workers
    prompt = list(range(3, 3 + 70))
    assert prefill.prefill("x", prompt, PARAMS).num_cached_tokens == 0
    assert prefill.prefill("y", prompt[:64] + [9, 9, 9], PARAMS).num_cached_tokens == 64


def test_unreleased_offer_is_withdrawn_at_its_deadline(engine_config):
    before = _segments()
    prefill = PrefillWorker(engine_config, handoff_deadline_s=0.3)
    try:
        prefill.prefill("late", list(range(3, 40)), PARAMS)
        assert prefill.stats().num_parked == 1
        assert prefill.sweep(wait_s=3) == ["late"]
        prefill.check_invariants()
        assert prefill.stats().kv_usage == 0 and prefill.stats().num_parked == 0
    finally:
        prefill.close()
    assert _segments() <= before


@pytest.mark.parametrize("bad, word", [({"temprature": 0}, "temprature"), ({"max_tokens": 0}, "max_tokens"),
                                       ({"stop": "x"}, "stop"), ([1], "dict")])
def test_sampling_params_dict_is_validated(bad, word):
    with pytest.raises(ValueError, match=word):
        sampling_params_from_dict(bad)


def test_sampling_params_dict_round_trips():
    p = sampling_params_from_dict({"temperature": 0.5, "stop": ["a"], "stop_token_ids": [2], "seed": 3})
    assert p.stop == ("a",) and p.stop_token_ids == (2,) and p.seed == 3 and not p.greedy


def test_failed_import_is_reported_for_recompute_and_frees_both_sides(workers):
    prefill, decode = workers
    prompt = list(range(3, 40))
    res = prefill.prefill("bad", prompt, PARAMS)
    wrong = [4] + prompt[1:] + [res.first_token]           # tokens the KV was not computed for
    started = decode.start(res.ticket, wrong, len(prompt), PARAMS)
    assert started.decision is not None and any("import failed" in e for e in started.errors), started
    assert prefill.sweep(wait_s=5) == ["bad"]
    for w in (prefill, decode):
        w.check_invariants()
        assert w.stats().kv_usage == 0


def test_decode_abort_frees_the_request(workers):
    prefill, decode = workers
    prompt = list(range(3, 40))
    res = prefill.prefill("gone", prompt, PARAMS)
    assert decode.start(res.ticket, prompt + [res.first_token], len(prompt), PARAMS).decision is None
    assert decode.step()[0].request_id == "gone"
    assert decode.abort("gone") and not decode.abort("gone")
    decode.check_invariants()
    assert decode.stats().kv_usage == 0 and decode.stats().num_running == 0
