"""The fluid ceiling (sim.capacity.met_bound / ceiling) is an upper bound: hand-checked cases, and
no simulated policy passes a rate the ceiling rules out."""

from __future__ import annotations

from dataclasses import replace

from sim.capacity import CAPACITY_ENGINE, capacity, ceiling, met_bound
from sim.cluster import ClusterSpec
from sim.run import RunSpec, Workload
from tests.sim.helpers import SIMPLE, req


def test_a_burst_meets_at_most_the_prefills_that_fit_before_their_deadline():
    # 10 prompts of 1000 tokens (0.1 s of prefill each on SIMPLE) arrive together, TTFT 0.35 s:
    # one GPU fits at most 3 prefills in 0.35 s, two GPUs 7.
    burst = [req(f"r{i}", 1000, 1, ttft=0.35) for i in range(10)]
    assert met_bound(burst, SIMPLE, gpus=1) == 3
    assert met_bound(burst, SIMPLE, gpus=2) == 7


def test_spread_out_requests_are_all_within_the_bound():
    calm = [req(f"r{i}", 1000, 1, arrival=float(i), ttft=0.35) for i in range(10)]
    assert met_bound(calm, SIMPLE, gpus=1) == 10


def test_no_policy_passes_a_rate_above_the_ceiling(conv_trace):
    spec = RunSpec(Workload(conv_trace, duration_s=10.0), "chatbot", "fcfs", ClusterSpec(colocated=1),
                   engine=CAPACITY_ENGINE)
    top = ceiling(spec, start_rate=8.0)
    for policy in ("fcfs", "slo"):
        assert capacity(replace(spec, policy=policy), start_rate=8.0, rel_tol=0.2).rate <= top


def test_with_kv_memory_only_the_requests_whose_kv_fits_can_be_left_unfinished():
    # 10 prompts of 100 tokens and 1000-token answers (1 s of decode each on SIMPLE), TTFT 1 s,
    # TPOT 1 s: without memory every decode can wait (the deadline is 1000 s away), so all 10
    # fit; with KV for three prompts, the other seven would have to finish within the first
    # second, which even one cannot (1.01 s of work).
    long = [req(f"r{i}", 100, 1001, ttft=1.0, tpot=1.0) for i in range(10)]
    assert met_bound(long, SIMPLE, gpus=1) == 10
    assert met_bound(long, SIMPLE, gpus=1, kv_tokens=300, kv_min_window_s=0.5) == 3
    assert met_bound(long, SIMPLE, gpus=1, kv_tokens=10**9, kv_min_window_s=0.5) == 10


def test_the_kv_resident_ceiling_is_no_higher_and_no_policy_passes_it(conv_trace):
    spec = RunSpec(Workload(conv_trace, duration_s=10.0), "chatbot", "slo", ClusterSpec(colocated=1),
                   engine=CAPACITY_ENGINE)
    top = ceiling(spec, start_rate=8.0, kv_resident=True)
    assert top <= ceiling(spec, start_rate=8.0)
    assert capacity(spec, start_rate=8.0, rel_tol=0.2).rate <= top
