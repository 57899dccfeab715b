"""Turning request states into the DP's rows for one worker (the cost view of a request)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from router.dp import DpItems
from router.perf_model import attention_pairs
from router.request import Phase, RequestState


@dataclass(frozen=True)
class Row:
    """One DP row before vectorisation (see DpItems for the meaning of each field)."""

    id: str
    prefill: int
    pairs: int
    deadline: float
    decodes: bool
    decode_ctx: int
    future: tuple[tuple[int, int, float], ...]
    mem: int
    mem_limit: float
    value: float
    tpot: float
    forced: bool


def row_for(r: RequestState, forced: bool, decodes: bool, prefills: bool, mem: int,
            mem_limit: float, value: float, in_flight: int = 0) -> Row:
    """The DP row of request `r` on a worker that decodes and/or prefills it; `in_flight` of its
    prefill tokens are in the batch running now (Snapshot.in_flight) and count as done."""
    waiting = r.phase is Phase.WAITING
    prefill = max(0, r.remaining_prefill - in_flight) if (prefills and waiting) else 0
    future = []
    prior = sum(s.input_tokens + r.max_output(i) for i, s in enumerate(r.request.stages[:r.stage + 1]))
    for s in r.request.stages[r.stage + 1:]:
        tok = s.input_tokens if prefills else 0
        future.append((tok, attention_pairs(tok, prior), s.slo.ttft_s))
        prior += s.input_tokens + s.max_output_tokens
    return Row(r.id, prefill, attention_pairs(prefill, r.context_tokens + (in_flight if prefill else 0)),
               r.ttft_deadline_s if prefill > 0 else math.inf, decodes,
               r.reserved_tokens if decodes else 0, tuple(future), mem, mem_limit, value,
               r.tightest_remaining_tpot_s if decodes else math.inf, forced)


def to_items(rows: list[Row]) -> DpItems:
    """Vectorise rows; future stages are padded to the longest chain (0 tokens, inf TTFT)."""
    n = len(rows)
    f = max((len(r.future) for r in rows), default=0)
    ft = np.zeros((n, f))
    fp = np.zeros((n, f))
    fl = np.full((n, f), np.inf)
    for i, r in enumerate(rows):
        for j, (tok, pairs, ttft) in enumerate(r.future):
            ft[i, j], fp[i, j], fl[i, j] = tok, pairs, ttft
    cols = list(zip(*[(r.prefill, r.pairs, r.deadline, r.decodes, r.decode_ctx, r.mem, r.mem_limit, r.value,
                       r.tpot, r.forced) for r in rows])) if rows else [()] * 10
    return DpItems(
        ids=tuple(r.id for r in rows),
        prefill=np.array(cols[0], dtype=float), pairs=np.array(cols[1], dtype=float),
        deadline=np.array(cols[2], dtype=float), decodes=np.array(cols[3], dtype=bool),
        decode_ctx=np.array(cols[4], dtype=float), future_tokens=ft, future_pairs=fp, future_ttft=fl,
        mem=np.array(cols[5], dtype=float), mem_limit=np.array(cols[6], dtype=float),
        value=np.array(cols[7], dtype=float), tpot=np.array(cols[8], dtype=float),
        forced=np.array(cols[9], dtype=bool))


@dataclass(frozen=True)
class Candidates:
    """Pending requests that passed the gate, vectorised once per step (one row each).

    Same columns as DpItems without the worker-specific memory limit; `interactive` marks the
    rows allowed into the KV reserve.
    """

    states: tuple[RequestState, ...]
    ids: tuple[str, ...]
    interactive: np.ndarray
    prefill: np.ndarray
    pairs: np.ndarray
    deadline: np.ndarray
    ctx: np.ndarray
    value: np.ndarray
    tpot: np.ndarray
    future_tokens: np.ndarray
    future_pairs: np.ndarray
    future_ttft: np.ndarray


def candidates(states: list[RequestState], interactive: list[bool], values: list[float]) -> Candidates:
    """Vectorise new requests (stage 0, nothing cached). Single-stage requests take a fast path."""
    n = len(states)
    pre, dl, ctx, tp = [0] * n, [0.0] * n, [0] * n, [0.0] * n
    multi = []
    for i, r in enumerate(states):
        req = r.request
        st = req.stages
        s0 = st[0]
        p = s0.input_tokens
        pre[i] = p
        dl[i] = req.arrival_s + s0.slo.ttft_s
        if len(st) == 1:
            cap = r.max_tokens_cap
            o = s0.max_output_tokens
            ctx[i] = p + (o if cap is None or cap >= o else max(1, cap))
            tp[i] = s0.slo.tpot_s
        else:
            ctx[i] = r.reserved_tokens
            tp[i] = r.tightest_remaining_tpot_s
            multi.append(i)
    f = max((len(states[i].request.stages) - 1 for i in multi), default=0)
    ft, fp, fl = np.zeros((n, f)), np.zeros((n, f)), np.full((n, f), np.inf)
    for i in multi:
        for j, (tok, pairs, ttft) in enumerate(row_for(states[i], False, True, True, 0, 0, 0).future):
            ft[i, j], fp[i, j], fl[i, j] = tok, pairs, ttft
    pa = np.array(pre, dtype=float)
    return Candidates(tuple(states), tuple(r.request.id for r in states), np.array(interactive, dtype=bool),
                      pa, pa * (pa + 1) / 2, np.array(dl), np.array(ctx, dtype=float),
                      np.array(values, dtype=float), np.array(tp), ft, fp, fl)


def _pad(a: np.ndarray, f: int, fill: float) -> np.ndarray:
    return a if a.shape[1] == f else np.hstack([a, np.full((a.shape[0], f - a.shape[1]), fill)])


def merge(forced: list[Row], c: Candidates, idx: np.ndarray, limit_interactive: float,
          limit_other: float, decodes: bool = True) -> DpItems:
    """DP rows for one worker: its admitted rows, then candidate rows `idx` with memory limits
    by lane (the KV reserve) and their full reservation as memory to take."""
    a = to_items(forced)
    f = max(a.future_tokens.shape[1], c.future_tokens.shape[1])
    k = len(idx)
    ctx = c.ctx[idx]
    return DpItems(
        ids=a.ids + tuple(c.ids[i] for i in idx),
        prefill=np.concatenate([a.prefill, c.prefill[idx]]),
        pairs=np.concatenate([a.pairs, c.pairs[idx]]),
        deadline=np.concatenate([a.deadline, c.deadline[idx]]),
        decodes=np.concatenate([a.decodes, np.full(k, decodes)]),
        decode_ctx=np.concatenate([a.decode_ctx, ctx if decodes else np.zeros(k)]),
        future_tokens=np.vstack([_pad(a.future_tokens, f, 0.0), _pad(c.future_tokens[idx], f, 0.0)]),
        future_pairs=np.vstack([_pad(a.future_pairs, f, 0.0), _pad(c.future_pairs[idx], f, 0.0)]),
        future_ttft=np.vstack([_pad(a.future_ttft, f, np.inf), _pad(c.future_ttft[idx], f, np.inf)]),
        mem=np.concatenate([a.mem, ctx]),
        mem_limit=np.concatenate([a.mem_limit, np.where(c.interactive[idx], limit_interactive, limit_other)]),
        value=np.concatenate([a.value, c.value[idx]]),
        tpot=np.concatenate([a.tpot, c.tpot[idx] if decodes else np.full(k, np.inf)]),
        forced=np.concatenate([a.forced, np.zeros(k, dtype=bool)]))
