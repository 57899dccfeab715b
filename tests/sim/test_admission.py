"""The SLO policy in the simulator admits what fits: disaggregated prefill batch times."""

from __future__ import annotations

from sim.cluster import ClusterSpec
from sim.run import RunSpec, Workload, simulate


def test_disaggregated_chatbot_at_the_trace_rate_is_admitted_not_best_effort(conv_trace):
    # chatbot TTFTs are mostly the 0.25 s floor: no longer than the longest prefill batch time
    spec = RunSpec(Workload(conv_trace, duration_s=60), "chatbot", "slo", ClusterSpec(prefill=1, decode=1))
    s = simulate(spec).summary
    assert s.requests > 150
    assert s.admitted >= 0.95 * s.requests and s.attainment >= 0.95
