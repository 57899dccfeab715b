"""The SLOs-Serve DP on one worker: value choices, tiers, window and tail, memory."""

from __future__ import annotations

import math

import numpy as np

from router.dp import plan_worker
from router.items import Row, to_items
from router.perf_model import AffinePiece, PerfModel

# linear model: 1 ms + 1 µs per prefill token + 10 µs per decode token => budget(τ) is exact
LIN = PerfModel((AffinePiece(0.001, (1e-6, 1e-5, 0.0, 0.0, 0.0)),))


def row(rid, prefill, deadline, tpot=0.1, mem=0, value=1.0, forced=False, limit=math.inf, future=()):
    return Row(rid, prefill, 0, deadline if prefill else math.inf, True, 0, future, mem, limit, value, tpot, forced)


def test_the_dp_prefers_two_small_requests_to_one_large_one():
    # τ = 0.1: B = (0.1 - 0.001) / 1e-6 = 99000 tokens per batch (minus overheads)
    rows = [row("big", 150_000, 0.2, value=1.5), row("s1", 90_000, 0.2), row("s2", 90_000, 0.2)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1])
    assert set(res.admitted) == {"s1", "s2"} and res.rejected == ("big",)


def test_greedy_in_deadline_order_would_take_the_large_one_first_the_dp_does_not():
    rows = [row("big", 150_000, 0.2, value=1.0), row("s1", 90_000, 0.21), row("s2", 90_000, 0.21)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1])
    assert set(res.admitted) == {"s1", "s2"}


def test_a_tighter_tier_is_admitted_only_when_it_is_worth_its_cost():
    # a 10 ms-TPOT request forces 10 ms batches (B = 9000): the two large loose ones no longer fit
    # at τ = 0.1 one batch holds l1 + l2 (90k of 99k); at τ = 0.01 ten batches hold only 89.7k
    rows = [row("tight", 1000, 0.5, tpot=0.01), row("l1", 45_000, 0.1), row("l2", 45_000, 0.1)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.01, 0.1])
    assert res.tau_s == 0.1 and set(res.admitted) == {"l1", "l2"}
    rows[1] = row("l1", 40_000, 0.1)       # now all three fit in ten 10 ms batches
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.01, 0.1])
    assert res.tau_s == 0.01 and set(res.admitted) == {"tight", "l1", "l2"}


def test_admitted_rows_are_kept_and_new_work_must_not_break_them():
    rows = [row("old", 90_000, 0.1, forced=True), row("new", 20_000, 0.1)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1])
    assert res.admitted == () and res.rejected == ("new",) and res.at_risk == ()


def test_an_admitted_set_that_no_longer_fits_is_reported_at_risk_not_dropped():
    rows = [row("old", 200_000, 0.1, forced=True), row("new", 10, 5.0)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1])
    assert res.at_risk == ("old",)


def test_pruning_never_loses_the_admitted_set_alone():
    # 30 ms + 1 µs per prefill token: B = 20k at τ = 0.05, 70k at τ = 0.1. "old" (admitted,
    # 136k due 0.2 s) fits alone only at τ = 0.1 (2 × 70k), and there with no other request.
    # With two labels kept, every label that survives the early deadlines carries candidates;
    # the DP must still find "old" alone at τ = 0.1 instead of the higher value at τ = 0.05.
    slow = PerfModel((AffinePiece(0.03, (1e-6, 1e-5, 0.0, 0.0, 0.0)),))
    rows = [row("old", 136_000, 0.2, forced=True), row("tight", 100, 0.1, tpot=0.05),
            *(row(f"c{i}", 5000, 0.1) for i in range(3))]
    res = plan_worker(to_items(rows), slow, 0.0, 0, [0.05, 0.1], labels=2)
    assert res.tau_s == 0.1 and res.at_risk == () and res.admitted == ()


def test_memory_limits_are_per_lane():
    rows = [row("a", 10, 1.0, mem=600, limit=1000), row("b", 10, 1.0, mem=600, limit=1000),
            row("c", 10, 1.0, mem=300, limit=800)]
    res = plan_worker(to_items(rows), LIN, 0.0, 200, [0.1])
    assert len(res.admitted) == 1 + ("c" in res.admitted)
    assert sum(600 if r in "ab" else 300 for r in res.admitted) + 200 <= 1000


def test_window_and_tail_agree_with_a_full_dp_on_an_easy_load():
    rng = np.random.default_rng(0)
    rows = [row(f"r{i}", int(rng.integers(100, 2000)), float(rng.uniform(0.2, 2.0))) for i in range(200)]
    small = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1], window=8)
    big = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1], window=256)
    assert len(small.admitted) == len(big.admitted) == 200
    assert small.window < big.window


def test_the_tail_keeps_the_exact_inequality_under_overload():
    rng = np.random.default_rng(1)
    rows = [row(f"r{i}", int(rng.integers(5_000, 60_000)), float(rng.uniform(0.1, 1.0))) for i in range(300)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1], window=8)
    adm = sorted((r for r in rows if r.id in set(res.admitted)), key=lambda r: r.deadline)
    cum = np.cumsum([r.prefill + 0 for r in adm])
    batches = np.floor(np.array([r.deadline for r in adm]) / 0.1 + 1e-9)
    assert np.all(cum <= batches * 99_000 + 1e-6) and 0 < len(adm) < 300
    assert set(res.admitted) | set(res.rejected) | set(res.deferred) == {r.id for r in rows}


def test_later_stages_reserve_prefill_rate():
    # a tool stage of 50k tokens due 0.3 s after it arrives needs 50k/2 per 0.1 s batch reserved
    chain = row("chain", 10, 1.0, future=((50_000, 0, 0.3),))
    other = row("other", 80_000, 0.1)
    res = plan_worker(to_items([chain, other]), LIN, 0.0, 0, [0.1])
    assert len(res.admitted) == 1


def test_what_fits_next_to_a_reserved_stage_still_fits_when_the_stage_arrives():
    # "chain" decodes (10 tokens a batch) and waits for a 50k-token stage with a 0.3 s TTFT: two
    # whole batches of 0.1 s once it arrives. When it does arrive (due 0.2 s, same plan time), its
    # decode token and its 50k prefill are both charged, so the reservation must be their sum.
    def before(x):
        return [row("chain", 0, math.inf, forced=True, future=((50_000, 0, 0.3),)), row("c", x, 0.2)]

    def after(x):
        return [row("chain", 50_000, 0.2, forced=True), row("c", x, 0.2, forced=True)]

    admitted = []
    for x in (147_000, 147_950, 147_970):      # 2 × (99k − 25,020) = 147,960 is the exact limit
        if plan_worker(to_items(before(x)), LIN, 0.0, 0, [0.1]).admitted == ("c",):
            admitted.append(x)
            assert plan_worker(to_items(after(x)), LIN, 0.0, 0, [0.1]).at_risk == ()
    assert admitted == [147_000, 147_950]


def test_rows_beyond_the_horizon_skip_the_dp_but_are_still_decided():
    rows = [row("near", 1000, 0.5), row("far", 1000, 50.0)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.1], horizon_s=1.0)
    assert res.window == 1 and set(res.admitted) == {"near", "far"}
