"""Shared progress rules: first token from the last prefill chunk, stages, tools, preemption."""

from __future__ import annotations

import pytest

from router.perf_model import BatchShape
from router.pool_order import Batch, Chunk
from router.progress import EventKind, apply_batch, arrive_stage, preempt
from router.request import SLO, Admission, Lane, Phase, Request, RequestState, Stage


def _batch(chunks=(), decode=()):
    return Batch("w0", tuple(chunks), tuple(decode), BatchShape(), 0.0)


def _chain(delay):
    return Request("r", "t", Lane.INTERACTIVE, 0.0, (Stage(10, 2, SLO(1, 1)), Stage(5, 1, SLO(1, 1), tool_delay_s=delay)))


def test_last_prefill_chunk_emits_the_first_token_and_decode_finishes_the_stage():
    s = {"r": RequestState(_chain(0.5))}
    s, ev = apply_batch(s, _batch([Chunk("r", 6, 0)]), 1.0)
    assert ev == [] and s["r"].prefilled == 6
    s, ev = apply_batch(s, _batch([Chunk("r", 4, 6)]), 2.0)
    assert [e.kind for e in ev] == [EventKind.FIRST_TOKEN] and s["r"].phase is Phase.DECODING
    s, ev = apply_batch(s, _batch(decode=["r"]), 3.0)
    assert [e.kind for e in ev] == [EventKind.TOKEN, EventKind.STAGE_DONE] and s["r"].phase is Phase.TOOL_WAIT
    r = arrive_stage(s["r"], 3.5)
    assert (r.stage, r.phase, r.stage_arrival_s, r.ttft_deadline_s) == (1, Phase.WAITING, 3.5, 4.5)


def test_a_stage_without_tool_delay_starts_at_once_and_the_request_finishes():
    s = {"r": RequestState(_chain(0.0))}
    s, _ = apply_batch(s, _batch([Chunk("r", 10, 0)]), 1.0)
    s, ev = apply_batch(s, _batch(decode=["r"]), 2.0)
    assert s["r"].stage == 1 and s["r"].phase is Phase.WAITING
    s, ev = apply_batch(s, _batch([Chunk("r", 5, 12)]), 3.0)
    assert [e.kind for e in ev] == [EventKind.FIRST_TOKEN, EventKind.STAGE_DONE, EventKind.DONE]


def test_arrive_stage_and_preempt_refuse_wrong_states():
    r = RequestState(_chain(1.0))
    with pytest.raises(ValueError, match="not waiting for a tool"):
        arrive_stage(r, 0.0)
    with pytest.raises(ValueError, match="only best-effort"):
        preempt(r)
    be = RequestState(_chain(1.0), phase=Phase.DECODING, prefilled=10, decoded=1, context_tokens=10,
                      admission=Admission.BEST_EFFORT)
    p = preempt(be)
    assert (p.phase, p.prefilled, p.context_tokens) == (Phase.WAITING, 0, 0)


def test_first_token_time_is_kept_for_the_stage_even_across_a_preemption_and_cleared_by_the_next():
    s = {"r": RequestState(_chain(0.5), admission=Admission.BEST_EFFORT)}
    s, _ = apply_batch(s, _batch([Chunk("r", 10, 0)]), 1.0)
    assert s["r"].first_token_s == 1.0
    s["r"] = preempt(s["r"])
    s, _ = apply_batch(s, _batch([Chunk("r", 10, 0)]), 1.5)         # re-prefilled: the TPOT still counts from 1.0
    assert s["r"].first_token_s == 1.0 and s["r"].decoded == 1
    s, _ = apply_batch(s, _batch(decode=["r"]), 2.0)
    r = arrive_stage(s["r"], 2.5)
    assert s["r"].phase is Phase.TOOL_WAIT and r.first_token_s is None
    think = Request("k", "t", Lane.INTERACTIVE, 0.0, (Stage(10, 1, SLO(1, 1)), Stage(0, 3, SLO(1, 1), tool_delay_s=0.5)))
    s = {"k": RequestState(think)}
    s, _ = apply_batch(s, _batch([Chunk("k", 10, 0)]), 1.0)
    s["k"] = arrive_stage(s["k"], 1.5)
    assert s["k"].phase is Phase.DECODING and s["k"].first_token_s is None   # no prompt: decodes at once
    s, ev = apply_batch(s, _batch(decode=["k"]), 1.6)
    assert ev[0].kind is EventKind.FIRST_TOKEN and s["k"].first_token_s == 1.6
