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
