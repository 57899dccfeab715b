"""Snapshot.in_flight: prefill tokens in the batch running now count as done where the plan starts."""

from __future__ import annotations

import math
from dataclasses import replace

from router.items import row_for
from router.perf_model import attention_pairs
from router.request import Admission, RequestState
from router.scheduler import SloScheduler
from tests.router.helpers import req, snap, worker


def _admitted(r, prefilled=0) -> RequestState:
    return RequestState(r, prefilled=prefilled, context_tokens=prefilled, admission=Admission.ADMITTED,
                        prefill_worker="w0", decode_worker="w0")


def test_a_row_counts_the_chunk_in_flight_as_done():
    s = _admitted(req("a", prompt=3000, ttft=0.5), prefilled=1000)
    plain = row_for(s, True, True, True, 0, math.inf, 0.0)
    fly = row_for(s, True, True, True, 0, math.inf, 0.0, in_flight=1500)
    assert plain.prefill == 2000 and plain.pairs == attention_pairs(2000, 1000)
    assert fly.prefill == 500 and fly.pairs == attention_pairs(500, 2500) and fly.deadline == plain.deadline
    done = row_for(s, True, True, True, 0, math.inf, 0.0, in_flight=2000)
    assert done.prefill == 0 and done.deadline == math.inf and done.decodes


def test_the_plan_starts_after_the_batch_in_flight_without_counting_it_twice(exact_model, calm_config):
    # an admitted 6000-token prompt, 4000 of it in the batch that runs until 0.1 s; its deadline
    # leaves one 100 ms batch after that: the 2000 left fit, all 6000 would not
    old = _admitted(req("old", prompt=6000, out=10, ttft=0.2, tpot=0.1))
    busy = replace(worker(), busy_until_s=0.1)
    s = snap(0.05, [old], [busy])
    stale = SloScheduler(exact_model, calm_config).schedule(s)
    assert stale.at_risk == ("old",)
    fresh = SloScheduler(exact_model, calm_config).schedule(replace(s, in_flight={"old": 4000}))
    assert fresh.at_risk == ()
