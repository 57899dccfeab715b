"""SLOs-Serve admission for one worker: a DP over deadline-ordered requests, then a cheap tail.

The batch model. Every batch takes at most τ seconds (τ ≤ the tightest TPOT admitted, so every
decoding request meets its TPOT in every batch; the caller offers the TPOT tiers and fractions of
them: a shorter τ costs more per token but gives a request more whole batches before its TTFT).
`PerfModel.budget(τ)` turns τ into B token-equivalents per batch; an admitted request costs, in
every batch of the window, w_i = its decode token at its largest context plus, for each later stage
k, the rate r_k = need_k / slots_k that stage's prefill will need (slots_k = ⌊ttft_k/τ⌋ − 1 whole
batches after it arrives, one lost to the batch it arrives in), and its remaining prefill costs p_i
(+ its attention pairs and one chunk overhead; every batch also keeps one chunk overhead for its
one unfinished chunk, B := budget − per_chunk). The rates add to the decode token (not max): when
stage k arrives, the DP charges the request its decode token and p_k = r_k·slots_k ≤ N_j·r_k in
cumP, so only the sum makes "fits before the arrival" imply "fits after it". With N_i = ⌊(d_i −
start)/τ⌋ whole batches before its TTFT deadline d_i, EDF on the admitted set meets every deadline
iff, for every admitted j in deadline order,

    Σ_{admitted i ≤ j} p_i  ≤  N_j · (B − W),   W = Σ_admitted w_i
    ⇔  ρ := min_j (B − cumP_j / N_j)  ≥  W.

    time ─▶ |  batch 1  |  batch 2  |  batch 3  | ...      each ≤ τ
            [ w w w w | prefill chunks (EDF) ]             B token-equivalents per batch
                         d_1 ▲          d_2 ▲

The DP. Requests (admitted ones are forced in) are visited by deadline. A label is one partial
choice (value, cumP, W, ρ, KV memory, chosen set); accepting request i needs the new ρ ≥ new W
and memory under its lane's limit. Labels of a step are pruned to a Pareto set on
(value ↑, cumP ↓, W ↓, ρ ↑, memory ↓) of at most `labels` members, plus the base label that
holds the admitted (forced) rows alone: pruning is value first, so without it every label could
carry candidates that a later admitted deadline breaks, and the DP would report a τ as broken
although the admitted set fits there. With it, a run ends broken only if the admitted set alone
does not fit at its τ. This runs once per candidate τ (one per TPOT tier: accepting a tighter
tier lowers τ for everyone), keeping the best.

The window. Only the first `window` candidates by deadline, and only those whose deadline falls
within `horizon_s`, go through the DP; the rest get a
vectorised greedy test in deadline order on the best label's state (accept when feasible, the
same inequality), with at most `rounds` passes; whatever is left is deferred to the next step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from router.perf_model import Budget, PerfModel

EPS = 1e-9


@dataclass(frozen=True)
class DpItems:
    """One row per request on this worker (forced rows are already admitted here).

    prefill: remaining prefill tokens of the current stage (0 if none), pairs: their attention
    pairs; deadline: its TTFT deadline (inf when prefill is 0); decodes: whether the request
    decodes on this worker; decode_ctx: its largest KV context; future_tokens / future_pairs /
    future_ttft (n × F, padded with 0 / 0 / inf): later stages;
    mem: KV tokens still to reserve (0 for forced rows); mem_limit: the reserved total this row's
    lane may reach; value; tpot: tightest remaining TPOT (inf if it does not decode here).
    """

    ids: tuple[str, ...]
    prefill: np.ndarray
    pairs: np.ndarray
    deadline: np.ndarray
    decodes: np.ndarray
    decode_ctx: np.ndarray
    future_tokens: np.ndarray
    future_pairs: np.ndarray
    future_ttft: np.ndarray
    mem: np.ndarray
    mem_limit: np.ndarray
    value: np.ndarray
    tpot: np.ndarray
    forced: np.ndarray


@dataclass(frozen=True)
class DpResult:
    """Decisions for the candidate rows; `at_risk` are forced rows the model says will miss."""

    admitted: tuple[str, ...]
    rejected: tuple[str, ...]
    deferred: tuple[str, ...]
    at_risk: tuple[str, ...]
    tau_s: float
    budget: Budget
    value: float
    window: int


@dataclass
class _Run:
    tau: float
    budget: Budget
    cap: float              # B − per_chunk: one batch's capacity for prefill and decode
    dem: np.ndarray
    n: np.ndarray
    w: np.ndarray
    ok: np.ndarray          # row allowed in this run (tier and individual feasibility)


def _prepare(items: DpItems, model: PerfModel, taus: list[float], start: float,
             reserve: float = 1.0) -> list[_Run]:
    """One run per batch time in `taus`, all computed at once: row k of each (taus × rows)
    array is exactly what the same elementwise formulas give for taus[k] alone."""
    bs = [model.budget(tau) for tau in taus]
    cols = np.array([(t, b.per_chunk, b.per_pair, b.per_decode, b.per_context) for t, b in zip(taus, bs)],
                    dtype=float)
    tau, per_chunk, per_pair, per_decode, per_context = (cols[:, k:k + 1] for k in range(5))
    p = items.prefill.astype(float)
    dem = np.where(p > 0, p + per_pair * items.pairs + per_chunk, 0.0)
    with np.errstate(invalid="ignore"):
        n = np.where(p > 0, np.floor((items.deadline - start) / tau + EPS), np.inf)
    dec = np.where(items.decodes, per_decode + per_context * items.decode_ctx, 0.0)
    if items.future_tokens.size:
        ft = items.future_tokens.astype(float)
        slots = np.floor(items.future_ttft / tau[:, :, None] + EPS) - 1.0
        need = ft + per_pair[:, :, None] * items.future_pairs + per_chunk[:, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(ft > 0, np.where(slots >= 1, need / slots, np.inf), 0.0)
        w = dec + reserve * rate.sum(axis=2)          # additive: see the module docstring
    else:
        w = dec
    ok = ((items.tpot >= tau - EPS) & ((p == 0) | (n >= 1)) & np.isfinite(w)) | items.forced
    return [_Run(t, b, b.tokens - b.per_chunk, dem[k], n[k], w[k], ok[k]) for k, (t, b) in enumerate(zip(taus, bs))]


def _prune(labels: list[tuple], keep: int) -> list[tuple]:
    """Pareto set on (value↑, P↓, W↓, ρ↑, mem↓), best value first, at most `keep` labels."""
    labels.sort(key=lambda l: (-l[0], l[2] - l[3]))
    out: list[tuple] = []
    for lab in labels:
        v, p, w, r, m, _ = lab
        if any(o[1] <= p and o[2] <= w and o[3] >= r and o[4] <= m for o in out):
            continue
        out.append(lab)
        if len(out) == keep:
            break
    return out


def _rho(r: float, B: float, cum: float, d: float, n: float) -> float:
    if d <= 0:
        return r
    return min(r, B - cum / n) if n >= 1 else -math.inf


def _dp(run: _Run, items: DpItems, rows: list[int], mem0: float, keep: int) -> tuple:
    """Best label (value, P, W, ρ, mem, chosen rows as a bit set over `rows`) of the DP.

    The base label (forced rows only) survives every prune, so the best label is on track
    whenever the forced rows alone are (see the module docstring)."""
    B = run.cap
    base = (0.0, 0.0, 0.0, math.inf, mem0, 0)
    labels = [base]
    dem, n, w, ok = run.dem, run.n, run.w, run.ok
    mem, lim, val, forced = items.mem, items.mem_limit, items.value, items.forced
    for bit, i in enumerate(rows):
        di, ni, wi, mi = float(dem[i]), float(n[i]), float(w[i]), float(mem[i])
        if forced[i]:
            def add(lab: tuple) -> tuple:
                v, p, ww, r, m, s = lab
                return v, p + di, ww + wi, _rho(r, B, p + di, di, ni), m + mi, s | (1 << bit)
            base = add(base)
            moved = [add(lab) for lab in labels]
            kept = [lab for lab in moved if lab[3] >= lab[2] - EPS]
            labels = kept or moved      # all broken: the base is too, so the admitted set does not fit
            if base not in labels:
                labels.append(base)
            continue
        if not ok[i]:
            continue
        li, vi = float(lim[i]), float(val[i])
        grown = list(labels)
        for v, p, ww, r, m, s in labels:
            p2, w2, m2 = p + di, ww + wi, m + mi
            r2 = _rho(r, B, p2, di, ni)
            if r2 >= w2 - EPS and m2 <= li:
                grown.append((v + vi, p2, w2, r2, m2, s | (1 << bit)))
        labels = _prune(grown, keep) if len(grown) > keep else grown
        if base not in labels:
            labels.append(base)
    return max(labels, key=lambda l: (l[3] >= l[2] - EPS, l[0], l[3] - l[2]))


def _greedy(run: _Run, items: DpItems, rows: np.ndarray, state: tuple, rounds: int):
    """Accept tail rows in deadline order while the window inequality holds (vectorised)."""
    B = run.cap
    _, P, W, R, M, _ = state
    acc, rej = [], []
    rej.extend(rows[~run.ok[rows]].tolist())
    rows = rows[run.ok[rows]]
    for _ in range(rounds):
        if rows.size == 0:
            return acc, rej, rows
        d, n, w, m = run.dem[rows], run.n[rows], run.w[rows], items.mem[rows]
        lim, forced = items.mem_limit[rows], items.forced[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            alone = np.minimum(R, np.where(d > 0, B - (P + d) / n, np.inf))
        fits = ((alone >= W + w - EPS) & (M + m <= lim)) | forced
        if not fits.all():
            rej.extend(rows[~fits].tolist())
            rows = rows[fits]
            continue
        cp, cw, cm = P + np.cumsum(d), W + np.cumsum(w), M + np.cumsum(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            rr = np.minimum.accumulate(np.minimum(R, np.where(d > 0, B - cp / n, np.inf)))
        good = ((rr >= cw - EPS) & (cm <= lim)) | forced
        f = int(np.argmin(good)) if not good.all() else rows.size
        if f:
            acc.extend(rows[:f].tolist())
            P, W, R, M = float(cp[f - 1]), float(cw[f - 1]), float(rr[f - 1]), float(cm[f - 1])
        if f == rows.size:
            return acc, rej, rows[:0]
        rej.append(int(rows[f]))
        rows = rows[f + 1:]
    return acc, rej, rows


def plan_worker(items: DpItems, model: PerfModel, start_s: float, mem_used: float,
                taus: list[float], window: int = 24, labels: int = 8, rounds: int = 64,
                horizon_s: float = math.inf, later_stage_reserve: float = 1.0,
                hold_tau: float | None = None) -> DpResult:
    """Choose which candidate rows this worker admits (see the module docstring).

    Contract: forced rows are always kept. If the result's at_risk is empty and the model is
    exact, EDF prefill with B − Σ_decoding w_i tokens per batch and batches of at most τ meets
    every admitted TTFT and TPOT, with no further arrivals. `taus` must be non-empty.
    `later_stage_reserve` < 1 reserves only that share of each later stage's prefill rate r_k:
    the contract then holds for later stages only while few of them arrive at once.
    `hold_tau`: the batch time the worker runs now. Among the τ where the admitted set stays on
    track, the highest value wins; where it is on track at none (the caller's view can be
    conservative: chunks of the batch in flight still count as pending), `hold_tau` is kept, the
    τ at which the admitted set was last shown to fit, rather than switching on value.
    """
    if not taus:
        raise ValueError("plan_worker needs at least one batch time")
    order = np.lexsort((~items.forced, items.deadline))
    cand = order[~items.forced[order]]
    in_head = (items.deadline[order] <= start_s + horizon_s) | items.forced[order]
    if len(cand) > window:
        first = np.zeros(len(order), dtype=bool)
        first[cand[:window]] = True
        in_head &= (items.deadline[order] <= items.deadline[cand[window - 1]]) & (items.forced[order] | first[order])
    head = order[in_head].tolist()
    tail = order[~in_head]
    best = None
    for run in _prepare(items, model, sorted(set(taus)), start_s, later_stage_reserve):
        lab = _dp(run, items, head, mem_used, labels)
        on_track = lab[3] >= lab[2] - EPS                      # keep the admitted on track first
        key = (on_track, lab[0] if on_track else float(run.tau == hold_tau), lab[3] - lab[2])
        if best is None or key > best[0]:
            best = (key, run, lab)
    _, run, lab = best
    chosen = {head[b] for b in range(len(head)) if lab[5] >> b & 1}
    acc, rej, left = _greedy(run, items, tail, lab, rounds)
    chosen.update(acc)
    chosen -= _repair(run, items, chosen, set(left.tolist()))
    taken = np.zeros(len(order), dtype=bool)
    taken[list(chosen)] = True
    waiting = np.zeros(len(order), dtype=bool)
    waiting[left] = True
    is_cand = ~items.forced
    ids = items.ids
    return DpResult(
        admitted=tuple(ids[i] for i in order[taken[order] & is_cand[order]].tolist()),
        rejected=tuple(ids[i] for i in cand[~taken[cand] & ~waiting[cand]].tolist()),
        deferred=tuple(ids[i] for i in np.flatnonzero(waiting & is_cand).tolist()),
        at_risk=_at_risk(run, items, sorted(chosen | set(np.flatnonzero(items.forced).tolist()))),
        tau_s=run.tau, budget=run.budget, value=float(items.value[taken & is_cand].sum()),
        window=len(head))


def _slack(run: _Run, items: DpItems, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by deadline and each one's token slack N_j·(B − W) − cumP_j (inf: no prefill)."""
    rows = rows[np.lexsort((~items.forced[rows], items.deadline[rows]))]
    W = float(run.w[rows].sum())
    cp = np.cumsum(run.dem[rows])
    with np.errstate(invalid="ignore"):
        slack = np.where(run.dem[rows] > 0, run.n[rows] * (run.cap - W) - cp, np.inf)
    return rows, slack


def _repair(run: _Run, items: DpItems, chosen: set[int], left: set[int], limit: int = 64) -> set[int]:
    """The exact check of the final set (the DP window and the greedy tail only see part of it).

    Rule: while some row j misses its deadline inequality, drop the chosen candidate that costs j
    the most per unit of value (its prefill if its deadline is not later than j's, plus N_j·w).
    Forced rows are never dropped; `left` (deferred) rows are not part of the set.
    """
    dropped: set[int] = set()
    if all(items.forced[i] for i in chosen):
        return dropped                  # only forced rows: nothing can be dropped
    forced = set(np.flatnonzero(items.forced).tolist()) - left
    for _ in range(limit):
        rows, slack = _slack(run, items, np.array(sorted(chosen | forced), dtype=int))
        bad = np.flatnonzero(slack < -1e-6)
        if bad.size == 0:
            break
        j = rows[bad[0]]
        cands = np.array([i for i in chosen if not items.forced[i]], dtype=int)
        if cands.size == 0:
            break
        nj = run.n[j] if np.isfinite(run.n[j]) else 1.0
        cost = np.where(items.deadline[cands] <= items.deadline[j], run.dem[cands], 0.0) + nj * run.w[cands]
        worst = int(cands[np.argmax(cost / np.maximum(items.value[cands], EPS))])
        chosen.discard(worst)
        dropped.add(worst)
    return dropped


def _at_risk(run: _Run, items: DpItems, rows: list[int]) -> tuple[str, ...]:
    """Forced rows whose own deadline inequality fails for the final set."""
    if not rows:
        return ()
    rows_a = np.array(rows, int)
    rows_a = rows_a[np.argsort(items.deadline[rows_a], kind="stable")]
    W = float(run.w[rows_a].sum())
    cp = np.cumsum(run.dem[rows_a])
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = np.where(run.dem[rows_a] > 0, run.cap - cp / run.n[rows_a], np.inf)
    bad = (slack < W - 1e-6) | ~np.isfinite(run.w[rows_a]) | (items.tpot[rows_a] < run.tau - EPS)
    return tuple(items.ids[i] for i in rows_a[bad] if items.forced[i])
