"""Decode fast-forward: how many identical decode steps a worker may run as one segment, and
their times. See `segment_length` for the rule; the engine cuts a segment short whenever the
worker's inputs change, so a run with segments equals a run one step at a time
(tests/sim/test_fidelity.py checks this)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.perf_model import PerfModel
from router.plan import BatchMode, Directive
from router.pool_order import Batch
from router.request import Admission, Phase, RequestState

_FULL_DECODE_MODES = (BatchMode.CHUNKED, BatchMode.PREFILL_FIRST)


@dataclass
class Segment:
    batch: Batch
    """A batch repeated `steps` times; `full` steps reach the first finisher (its last step goes
    through progress.apply_batch, the others only advance counters)."""

    ends: list[float]         # end time of each step
    steps: int                # steps to apply (may be truncated)
    full: int                 # steps until the first finisher (the last one goes through apply_batch)
    version: int


def segment_length(batch: Batch, members: list[RequestState], resident: list[RequestState], d: Directive,
                   perf: PerfModel, max_segment: int) -> int:
    """Steps the same decode batch repeats unchanged (1: no fast-forward).

    Rule: a pure-decode batch that holds every decoding resident repeats while nothing
    finishes and the rule that formed it keeps choosing the same set: CHUNKED/PREFILL_FIRST
    take every decoder (no chunk now means none can start until memory frees); DECODE_ONLY
    keeps its optional (best-effort) members while the whole batch's planned time stays within
    the tightest of the directive's limit and their TPOTs; SLO keeps its best-effort members
    while the whole batch's decode cost stays within the budget. Step times and costs only
    grow with context, so the first step that breaks the rule ends the segment.
    """
    if batch.chunks or not batch.decode:
        return 1
    if any(r.phase is not Phase.DECODING or r.decoded < 1 for r in members):
        return 1
    if sum(1 for r in resident if r.phase is Phase.DECODING) != len(members):
        return 1
    k = max(1, min(max_segment, min(r.remaining_decode for r in members)))
    if d.mode in _FULL_DECODE_MODES or k == 1:
        return k
    optional = [r for r in members if r.admission is not Admission.ADMITTED]
    if not optional:
        return k
    n, ctx0 = len(members), batch.shape.decode_context
    if d.mode is BatchMode.DECODE_ONLY:
        limit = min([d.batch_time_s] + [r.current.slo.tpot_s for r in optional])
        x = np.zeros((k, 5))
        x[:, 1] = x[:, 4] = n
        x[:, 2] = ctx0 + np.arange(k) * n
        ok = perf.times(x) * (1.0 + perf.margin) <= limit
    elif d.mode is BatchMode.SLO:
        b = perf.budget(d.batch_time_s)
        ok = n * b.per_decode + b.per_context * (ctx0 + np.arange(k) * n) <= b.tokens
    else:
        return 1
    return max(1, int(np.argmin(ok)) if not ok.all() else k)


def step_times(batch: Batch, k: int, perf: PerfModel) -> np.ndarray:
    """Cumulative end offsets of k repeats of `batch` (k > 1: pure decode, context + n per step)."""
    if k <= 1:
        return np.array([perf.time(batch.shape)])
    n, ctx0 = len(batch.decode), batch.shape.decode_context
    x = np.zeros((k, 5))
    x[:, 1] = x[:, 4] = n
    x[:, 2] = ctx0 + np.arange(k, dtype=float) * n
    return np.cumsum(perf.times(x))
