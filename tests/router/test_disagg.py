"""Disaggregated planning: prefill/decode pools, pair choice, KV transfer in the TTFT budget."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.disagg import DecodePool
from router.kv_model import LLAMA3_8B, Link
from router.perf_model import BatchShape
from router.policies.lanes import memory_limit
from router.plan import BatchMode, DecisionKind, WorkerRole, WorkerState
from router.request import Admission, Lane, Phase, RequestState
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


def test_a_ttft_shorter_than_the_longest_prefill_batch_is_admitted(exact_model, calm_config):
    # 0.2 s of TTFT holds no whole 0.25 s prefill batch; a shorter prefill batch time holds several
    assert calm_config.prefill_batch_time_s > 0.2
    s = SloScheduler(exact_model, calm_config)
    plan = s.schedule(snap(0.0, [RequestState(req("r", prompt=1000, ttft=0.2))], POOLS))
    d = plan.decision("r")
    assert d.kind is DecisionKind.ADMIT
    tau = plan.directive(d.prefill_worker).batch_time_s
    assert tau <= 0.2 and exact_model.budget(tau).tokens >= 1000 / (0.2 // tau)


def test_a_busy_prefill_worker_still_admits_within_the_ttft(exact_model, calm_config):
    busy = [WorkerState(w.id, w.role, w.kv_capacity_tokens, busy_until_s=0.1 if w.id == "p0" else 0.0)
            for w in POOLS[:1] + POOLS[2:]]
    s = SloScheduler(exact_model, calm_config)
    plan = s.schedule(snap(0.0, [RequestState(req("r", prompt=1000, ttft=0.3))], busy))
    assert plan.decision("r").kind is DecisionKind.ADMIT


def _scalar_pick(pool, r, lane, model, reserve):
    """The pair-choice rule one worker at a time (the reference DecodePool.pick must equal)."""
    best, best_slack = None, -1.0
    for i, w in enumerate(pool.workers):
        tpot = min(float(pool.tpot[i]), r.tightest_remaining_tpot_s)
        if float(pool.mem[i]) + r.reserved_tokens > memory_limit(lane, w.kv_capacity_tokens, reserve):
            continue
        n = int(pool.seqs[i]) + 1
        t = model.planned_time(BatchShape(decode_tokens=n, decode_context=int(pool.context[i] + r.reserved_tokens),
                                          num_seqs=n))
        if tpot - t >= 0 and tpot - t > best_slack:
            best, best_slack = i, tpot - t
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_vectorised_pair_choice_equals_the_per_worker_rule(exact_model, seed):
    rng = np.random.default_rng(seed)
    model = exact_model.with_margin(float(rng.choice([0.0, 0.03, 0.1])))
    workers = [WorkerState(f"d{i}", WorkerRole.DECODE, int(rng.integers(50_000, 400_000)))
               for i in range(int(rng.integers(1, 12)))]
    pool = DecodePool(workers, model, 0.1)
    pool.workers = workers
    for _ in range(int(rng.integers(0, 300))):
        r = RequestState(req("x", prompt=int(rng.integers(1, 8000)), out=int(rng.integers(1, 2000)),
                             tpot=float(rng.choice([0.02, 0.05, 0.1]))))
        pool.add(int(rng.integers(len(workers))), r)
    for k in range(20):
        r = RequestState(req(f"n{k}", prompt=int(rng.integers(1, 8000)), out=int(rng.integers(1, 2000)),
                             tpot=float(rng.choice([0.01, 0.02, 0.05, 0.1]))))
        lane = [Lane.INTERACTIVE, Lane.HEAVY][k % 2]
        assert pool.pick(r, lane) == _scalar_pick(pool, r, lane, model, 0.1)


def test_best_effort_spreads_over_decode_workers_by_free_kv(exact_model):
    """Requests no prefill worker can admit go best effort; each takes the decode worker with the
    most free KV counting the ones placed before it in the same plan (not all the first one)."""
    from router.config import SchedulerConfig
    from router.plan import DecisionKind, WorkerRole
    from router.scheduler import SloScheduler
    from tests.router.helpers import pending, req, snap, worker

    workers = (worker("p0", role=WorkerRole.PREFILL), worker("p1", role=WorkerRole.PREFILL),
               worker("d0", role=WorkerRole.DECODE), worker("d1", role=WorkerRole.DECODE))
    impossible = [req(f"r{i}", prompt=4000, out=20, ttft=0.001) for i in range(4)]   # no TTFT fits
    plan = SloScheduler(exact_model, SchedulerConfig()).schedule(snap(0.0, pending(*impossible), workers))
    best = [d for d in plan.decisions if d.kind is DecisionKind.BEST_EFFORT]
    assert len(best) == 4
    assert sorted(d.decode_worker for d in best) == ["d0", "d0", "d1", "d1"]
    assert sorted(d.prefill_worker for d in best) == ["p0", "p0", "p1", "p1"]
