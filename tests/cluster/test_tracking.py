"""The controller's per-request record: the scheduler's view counts from the controller's clock zero."""

from __future__ import annotations

import pytest

from cluster.api import GenerateRequest, StageSpec
from cluster.tracking import Tracked
from router.plan import Decision, DecisionKind
from router.request import SLO, Admission, Lane, Phase, Request, Stage

CLOCK0 = 1000.0       # monotonic time of the scheduler clock's zero


def _tracked() -> Tracked:
    req = GenerateRequest("r", (3, 4, 5), {"max_tokens": 3}, stages=(StageSpec((6, 7), max_tokens=2),))
    request = Request("r", "default", Lane.INTERACTIVE, 5.0,
                      (Stage(3, 3, SLO(0.5, 0.1)), Stage(2, 2, SLO(0.4, 0.1))))
    return Tracked(req, request, CLOCK0 + 5.0, CLOCK0)


def test_first_token_and_next_stage_times_are_on_the_scheduler_clock():
    t = _tracked()
    t.admitted(Decision("r", DecisionKind.BEST_EFFORT, Lane.INTERACTIVE, "w0", "w0"), CLOCK0 + 5.1)
    t.tokens_out([9], "x", CLOCK0 + 5.3)
    assert t.state.phase is Phase.DECODING and t.state.first_token_s == pytest.approx(5.3)
    t.tokens_out([9], "x", CLOCK0 + 5.4)
    assert t.state.first_token_s == pytest.approx(5.3) and t.state.decoded == 2
    t.tokens_out([9], "x", CLOCK0 + 5.5)
    t.stage_finished("length", CLOCK0 + 5.5)
    t.begin_next_stage(CLOCK0 + 6.0)
    s = t.state
    assert s.stage == 1 and s.stage_arrival_s == pytest.approx(6.0) and s.first_token_s is None
    assert s.ttft_deadline_s == pytest.approx(6.4)        # the same clock as Snapshot.now_s


def test_promotion_makes_the_request_admitted():
    t = _tracked()
    t.admitted(Decision("r", DecisionKind.BEST_EFFORT, Lane.INTERACTIVE, "w0", "w0"), CLOCK0 + 5.1)
    assert t.state.admission is Admission.BEST_EFFORT
    t.promoted()
    assert t.state.admission is Admission.ADMITTED and t.admission == "admitted"
