"""Disaggregated planning: prefill/decode pools, pair choice, KV transfer in the TTFT budget."""

from __future__ import annotations

from router.kv_model import LLAMA3_8B, Link
from router.plan import BatchMode, DecisionKind, WorkerRole
from router.request import Admission, Phase, RequestState
from router.scheduler import SloScheduler
from tests.router.helpers import req, snap, worker

POOLS = [worker("p0", role=WorkerRole.PREFILL), worker("p1", role=WorkerRole.PREFILL),
         worker("d0", role=WorkerRole.DECODE), worker("d1", role=WorkerRole.DECODE)]


def _decoding_on(rid, wid, ctx=4000, tpot=0.05):
    return RequestState(req(rid, prompt=ctx, out=100, tpot=tpot), phase=Phase.DECODING, prefilled=ctx,
                        decoded=1, context_tokens=ctx, admission=Admission.ADMITTED,
                        prefill_worker="p0", decode_worker=wid)


def test_admitted_requests_get_a_prefill_and_a_decode_worker(exact_model, calm_config):
    s = SloScheduler(exact_model, calm_config)
    plan = s.schedule(snap(0.0, [RequestState(req(f"r{i}", prompt=500, ttft=1.0)) for i in range(6)], POOLS))
    adm = [d for d in plan.decisions if d.kind is DecisionKind.ADMIT]
    assert len(adm) == 6
    assert all(d.prefill_worker in ("p0", "p1") and d.decode_worker in ("d0", "d1") for d in adm)
    assert {d.prefill_worker for d in adm} == {"p0", "p1"}           # spread over the prefill pool
    modes = {d.worker_id: d.mode for d in plan.directives}
    assert modes == {"p0": BatchMode.PREFILL_ONLY, "p1": BatchMode.PREFILL_ONLY,
                     "d0": BatchMode.DECODE_ONLY, "d1": BatchMode.DECODE_ONLY}


def test_pair_choice_takes_the_decode_worker_with_the_most_step_time_slack(exact_model, calm_config):
    s = SloScheduler(exact_model, calm_config)
    busy = [_decoding_on(f"b{i}", "d0") for i in range(40)]
    plan = s.schedule(snap(0.0, busy + [RequestState(req("new", prompt=500, ttft=1.0))], POOLS))
    assert plan.decision("new").decode_worker == "d1"


def test_a_tpot_no_decode_worker_can_keep_goes_best_effort(exact_model, calm_config):
    s = SloScheduler(exact_model, calm_config)
    plan = s.schedule(snap(0.0, [RequestState(req("fast", prompt=500, ttft=1.0, tpot=0.004))], POOLS))
    assert plan.decision("fast").kind is DecisionKind.BEST_EFFORT


def test_kv_transfer_time_comes_out_of_the_ttft_budget(exact_model, calm_config):
    ttft = exact_model.prefill_time(2000) * 1.3 + calm_config.prefill_batch_time_s
    r = RequestState(req("r", prompt=2000, ttft=ttft))
    fast = SloScheduler(exact_model, calm_config, transfer_s=lambda n: Link(50e9).transfer_s(LLAMA3_8B, n))
    slow = SloScheduler(exact_model, calm_config, transfer_s=lambda n: Link(1e8).transfer_s(LLAMA3_8B, n))
    assert fast.schedule(snap(0.0, [r], POOLS)).decision("r").kind is DecisionKind.ADMIT
    assert slow.schedule(snap(0.0, [r], POOLS)).decision("r").kind is DecisionKind.BEST_EFFORT
