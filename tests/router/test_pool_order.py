"""Batch formation inside a worker: urgency, EDF, decode packing, baseline modes."""

from __future__ import annotations

from router.plan import BatchMode, Directive
from router.pool_order import deadline_order, form_batch, pack_decode, urgency_order
from router.request import Admission, Phase, RequestState
from tests.router.helpers import req


def _wait(rid, prompt, ttft, adm=Admission.ADMITTED, arrival=0.0):
    return RequestState(req(rid, prompt=prompt, ttft=ttft, arrival=arrival), admission=adm,
                        prefill_worker="w0", decode_worker="w0")


def _dec(rid, ctx, remaining, tpot=0.1, adm=Admission.ADMITTED):
    r = req(rid, prompt=ctx, out=remaining + 1, tpot=tpot)
    return RequestState(r, phase=Phase.DECODING, prefilled=ctx, decoded=1, context_tokens=ctx, admission=adm)


def test_urgency_puts_the_request_most_in_danger_first():
    a = _wait("a", 100, 1.0)        # slack 1.0 - 0.01
    b = _wait("b", 5000, 1.2)       # slack 1.2 - 0.5
    assert [r.id for r in urgency_order([a, b], 0.0, 1e-4)] == ["b", "a"]
    assert [r.id for r in deadline_order([b, a])] == ["a", "b"]


def test_pack_decode_adds_shortest_remaining_first_while_under_the_tightest_tpot(exact_model):
    must = [_dec("m", 4000, 10)]
    opt = [_dec(f"o{i}", 4000, 301 - i) for i in range(300)]
    chosen = pack_decode(must, opt, exact_model, 0.05)
    assert chosen[0].id == "m" and 1 < len(chosen) < 301
    remaining = [r.remaining_decode for r in chosen[1:]]
    assert remaining == sorted(remaining)
    from router.perf_model import BatchShape
    n = len(chosen)
    assert exact_model.planned_time(BatchShape(decode_tokens=n, decode_context=4000 * n, num_seqs=n)) <= 0.05


def test_slo_batch_keeps_admitted_decode_and_fills_prefill_to_the_time_budget(exact_model):
    rs = [_dec("d", 1000, 50), _wait("p1", 3000, 1.0), _wait("p2", 3000, 0.5)]
    b = form_batch(0.0, rs, Directive("w0", BatchMode.SLO, 0.05, 0), exact_model, 10**6)
    assert "d" in b.decode and b.chunks[0].request_id == "p2"           # EDF
    assert exact_model.time(b.shape) <= 0.05


def test_chunked_mode_respects_the_token_budget_and_order(exact_model):
    rs = [_dec("d", 100, 5), _wait("p1", 800, 1.0), _wait("p2", 800, 0.5)]
    b = form_batch(0.0, rs, Directive("w0", BatchMode.CHUNKED, 10.0, 512, ("p1", "p2")), exact_model, 10**6)
    assert b.decode == ("d",) and [c.request_id for c in b.chunks] == ["p1"] and b.chunks[0].tokens == 511


def test_prefill_first_runs_whole_prompts_without_decode(exact_model):
    rs = [_dec("d", 100, 5), _wait("p1", 800, 1.0), _wait("p2", 800, 0.5)]
    b = form_batch(0.0, rs, Directive("w0", BatchMode.PREFILL_FIRST, 10.0, 2048, ("p1", "p2")), exact_model, 10**6)
    assert b.decode == () and [(c.request_id, c.tokens) for c in b.chunks] == [("p1", 800), ("p2", 800)]


def test_baseline_modes_wait_for_kv_memory(exact_model):
    rs = [_wait("p1", 800, 1.0), _wait("p2", 800, 1.0)]
    b = form_batch(0.0, rs, Directive("w0", BatchMode.CHUNKED, 10.0, 4096, ("p1", "p2")), exact_model, 1000)
    assert [c.request_id for c in b.chunks] == ["p1"]


def test_best_effort_prefill_starts_only_while_its_kv_reservation_fits(exact_model):
    adm = _wait("a", 400, 1.0)                                  # admitted, not started: still counted
    be1 = _wait("b1", 300, 1.0, adm=Admission.BEST_EFFORT, arrival=0.1)
    be2 = _wait("b2", 300, 1.0, adm=Admission.BEST_EFFORT, arrival=0.2)
    cap = adm.reserved_tokens + be1.reserved_tokens             # room for one best-effort start
    b = form_batch(0.0, [adm, be1, be2], Directive("w0", BatchMode.SLO, 0.5, 0), exact_model, cap)
    assert [c.request_id for c in b.chunks] == ["a", "b1"]
    started = RequestState(be2.request, admission=Admission.BEST_EFFORT, prefilled=100, context_tokens=100,
                           prefill_worker="w0", decode_worker="w0")   # started: always continues
    b = form_batch(0.0, [adm, be1, started], Directive("w0", BatchMode.SLO, 0.5, 0), exact_model, cap)
    assert [c.request_id for c in b.chunks] == ["a", "b2"]


def test_best_effort_that_can_still_meet_its_ttft_goes_first_and_late_ones_wait_for_admitted_prefill(exact_model):
    late = _wait("late", 200, 0.1, adm=Admission.BEST_EFFORT, arrival=0.0)      # due at 0.1 < 1.0 + τ
    fresh = _wait("fresh", 200, 5.0, adm=Admission.BEST_EFFORT, arrival=0.5)    # due at 5.5
    d = Directive("w0", BatchMode.SLO, 0.2, 0)
    b = form_batch(1.0, [late, fresh], d, exact_model, 10**6)
    assert [c.request_id for c in b.chunks] == ["fresh", "late"]            # on time first
    adm = _wait("a", 200, 5.0)
    b = form_batch(1.0, [adm, late, fresh], d, exact_model, 10**6)
    assert [c.request_id for c in b.chunks] == ["a", "fresh"]              # late waits
