"""Batch (iteration) time model: a roofline-style max of affine pieces, its fit and its inverse.

    time(x) = max_k ( b_k + c_k · x )        x = (prefill tokens, decode tokens,
                                                  decode context tokens, prefill attention pairs,
                                                  sequences)

One piece is the weight-bandwidth floor (a small batch costs about the same as one token), the
other the compute slope; attention enters through the decode context (KV bytes read) and the
prefill attention pairs (query × key products), both linear. Every coefficient is >= 0, so the
model is monotone in every feature: the property the scheduler's conservative arguments rest on.

The scheduler plans with `planned = time × (1 + margin)` (the safety margin) and with the
linear *token-equivalent* view of `budget(...)`, which never exceeds the true model.

Evaluation order. `time` (plain Python floats, the scheduler's per-call fast path) and `times`
(numpy, over rows) both evaluate every piece as ((((b + c_P·P) + c_D·D) + c_C·C) + c_Q·Q) + c_S·S,
one IEEE operation at a time, so the two agree bit for bit and a vectorised caller decides
exactly what a scalar one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FEATURES = ("prefill_tokens", "decode_tokens", "decode_context", "prefill_pairs", "num_seqs")
P, D, C, Q, S = range(5)


def attention_pairs(chunk: int, prior: int) -> int:
    """Query·key products of a prefill chunk of `chunk` tokens on top of `prior` cached tokens."""
    return chunk * prior + chunk * (chunk + 1) // 2


@dataclass(frozen=True)
class BatchShape:
    """What a batch costs: the five model features (see the module docstring)."""

    prefill_tokens: int = 0
    decode_tokens: int = 0
    decode_context: int = 0
    prefill_pairs: int = 0
    num_seqs: int = 0

    def vector(self) -> np.ndarray:
        return np.array([self.prefill_tokens, self.decode_tokens, self.decode_context,
                         self.prefill_pairs, self.num_seqs], dtype=float)


@dataclass(frozen=True)
class AffinePiece:
    """`intercept + coef · x` in seconds; every entry >= 0."""

    intercept: float
    coef: tuple[float, float, float, float, float]

    def __post_init__(self) -> None:
        if self.intercept < 0 or any(c < 0 for c in self.coef) or len(self.coef) != 5:
            raise ValueError(f"an affine piece needs 5 non-negative coefficients: {self}")


@dataclass(frozen=True)
class Budget:
    """The linear token-equivalent view of one batch at a time limit (see `PerfModel.budget`).

    A batch meets the limit if
        Σ_chunks (tokens + per_pair·pairs + per_chunk) + Σ_decoders (per_decode + per_context·ctx)
        ≤ tokens.
    Attention pairs of a whole prefill do not depend on how it is chunked
    (Σ_t (prior + t) = attention_pairs(p, prior)), so a request's prefill cost is additive.
    """

    tokens: float            # capacity in prefill-token equivalents
    per_chunk: float         # one prefill chunk's sequence overhead
    per_pair: float          # one query·key product of prefill attention
    per_decode: float        # one decode token (its sequence included)
    per_context: float       # one KV token read by a decode token

    def decode_cost(self, context_tokens: int | float) -> float:
        return self.per_decode + self.per_context * context_tokens

    def prefill_cost(self, tokens: int, prior: int) -> float:
        """Token equivalents of prefilling `tokens` on top of `prior` cached ones (no chunk overhead)."""
        return tokens + self.per_pair * attention_pairs(tokens, prior)

    def chunk_fit(self, room: float, prior: int, remaining: int) -> int:
        """Largest chunk c <= remaining with c + per_pair·pairs(c, prior) + per_chunk <= room."""
        r = room - self.per_chunk
        if r < 1:
            return 0
        k = self.per_pair
        # k/2 c² + (1 + k (prior + 1/2)) c - r <= 0
        a, b = k / 2.0, 1.0 + k * (prior + 0.5)
        c = int(np.floor(2 * r / (b + np.sqrt(b * b + 4 * a * r)) + 1e-9))   # stable root
        while c > 0 and c + k * attention_pairs(c, prior) > r + 1e-9:
            c -= 1
        return max(0, min(remaining, c))


@dataclass(frozen=True)
class PerfModel:
    """Batch time in seconds as a max of affine pieces, plus the margin the scheduler applies."""

    pieces: tuple[AffinePiece, ...]
    margin: float = 0.0
    _b: np.ndarray = field(init=False, repr=False, compare=False)
    _c: np.ndarray = field(init=False, repr=False, compare=False)
    _rows: tuple = field(init=False, repr=False, compare=False)
    _budgets: dict = field(init=False, repr=False, compare=False)   # budget(limit_s) memo

    def __post_init__(self) -> None:
        if not self.pieces:
            raise ValueError("a performance model needs at least one piece")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        object.__setattr__(self, "_b", np.array([p.intercept for p in self.pieces]))
        object.__setattr__(self, "_c", np.array([p.coef for p in self.pieces]))
        object.__setattr__(self, "_rows", tuple((float(p.intercept),) + tuple(float(c) for c in p.coef)
                                                for p in self.pieces))
        object.__setattr__(self, "_budgets", {})

    def with_margin(self, margin: float) -> "PerfModel":
        return PerfModel(self.pieces, margin)

    def time(self, shape: BatchShape) -> float:
        """Predicted batch time (no margin)."""
        return self.time_of(shape.prefill_tokens, shape.decode_tokens, shape.decode_context,
                            shape.prefill_pairs, shape.num_seqs)

    def time_of(self, p: float, d: float, c: float, q: float, s: float) -> float:
        """`time` of the batch with these five features (module docstring: evaluation order)."""
        return max(b + cp * p + cd * d + cc * c + cq * q + cs * s for b, cp, cd, cc, cq, cs in self._rows)

    def planned_time(self, shape: BatchShape) -> float:
        """Predicted batch time with the safety margin: what plans are checked against."""
        return self.time(shape) * (1.0 + self.margin)

    def times(self, x: np.ndarray) -> np.ndarray:
        """Vectorised `time` over rows of features (n × 5), equal to `time` row by row."""
        x = np.asarray(x, dtype=float)
        return self.times_of(x[:, P], x[:, D], x[:, C], x[:, Q], x[:, S])

    def times_of(self, p, d, c, q, s) -> np.ndarray:
        """`time_of` over arrays (broadcast), bit-equal to it element by element."""
        out = None
        for b, cp, cd, cc, cq, cs in self._rows:
            t = b + cp * p + cd * d + cc * c + cq * q + cs * s
            out = t if out is None else np.maximum(out, t)
        return np.asarray(out, dtype=float)

    def prefill_time(self, tokens: int) -> float:
        """No-load time to prefill one fresh prompt in one batch (the base of relative TTFT SLOs)."""
        return self.time(BatchShape(prefill_tokens=tokens, prefill_pairs=attention_pairs(tokens, 0),
                                    num_seqs=1))

    def budget(self, limit_s: float) -> Budget:
        """Conservative linear capacity of a batch that must finish within `limit_s` (with margin).

        Rule: piece k fits if  c_k·x ≤ L_k := limit/(1+margin) − b_k. Measure every cost item in
        "fractions of a batch", max_k c_k,item / L_k, and rescale so a prefill token costs 1:
        a batch whose items sum to at most U = 1 / max_k (c_kP / L_k) then satisfies every piece,
        so it satisfies the model. (Sum of per-item maxima >= max of per-piece sums.)
        """
        b = self._budgets.get(limit_s)
        if b is None:
            if len(self._budgets) >= 4096:      # limits come from a few SLO tiers; stay bounded anyway
                self._budgets.clear()
            b = self._budgets[limit_s] = self._budget(limit_s)
        return b

    def _budget(self, limit_s: float) -> Budget:
        lim = limit_s / (1.0 + self.margin)
        room = lim - self._b
        if np.any(room <= 0):
            return Budget(0.0, 0.0, 0.0, 0.0, 0.0)
        frac = self._c / room[:, None]            # pieces × features, fractions of a batch
        tok = float(np.max(frac[:, P]))
        if tok <= 0:
            raise ValueError("the model has no prefill-token cost; cannot form a token budget")
        return Budget(tokens=1.0 / tok,
                      per_chunk=float(np.max(frac[:, S])) / tok,
                      per_pair=float(np.max(frac[:, Q])) / tok,
                      per_decode=float(np.max(frac[:, D] + frac[:, S])) / tok,
                      per_context=float(np.max(frac[:, C])) / tok)

    def max_prefill_tokens(self, limit_s: float, decode_tokens: int = 0, decode_context: int = 0,
                           prior: int = 0) -> int:
        """How many prefill tokens (one chunk on `prior` cached tokens) fit in `limit_s` next to a
        decode batch: a conservative inverse, planned_time(result) <= limit_s. 0 when none fit."""
        b = self.budget(limit_s)
        room = b.tokens - decode_tokens * b.per_decode - decode_context * b.per_context
        return b.chunk_fit(room, prior, 1 << 40)


@dataclass(frozen=True)
class FitReport:
    """Fit quality on held-out points; `suggested_margin` covers 90% of the under-predictions."""

    r2: float
    p50_rel_err: float
    p90_rel_err: float
    max_rel_err: float
    n_train: int
    n_test: int
    suggested_margin: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (active set by dropping negative columns)."""
    active = np.ones(a.shape[1], dtype=bool)
    x = np.zeros(a.shape[1])
    for _ in range(a.shape[1] + 1):
        if not active.any():
            return x
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if np.all(sol >= 0):
            x[:] = 0
            x[active] = sol
            return x
        idx = np.flatnonzero(active)
        active[idx[np.argmin(sol)]] = False
    x[:] = 0
    return x


def fit(x: np.ndarray, y: np.ndarray, pieces: int = 2, iters: int = 30,
        shared: tuple[int, ...] = (C, Q)) -> PerfModel:
    """Least-squares fit of a max of `pieces` affine pieces to times `y` (seconds).

    Rule: start by splitting the points at the median token count (the roofline knee), then
    alternate (a) one non-negative least-squares solve, rows weighted by 1/y so the error is
    relative, in which each point uses the intercept and slopes of its piece and the `shared`
    features (attention: decode context, prefill pairs) have one slope for all pieces, and
    (b) reassign every point to the piece that attains the max.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[1] != 5 or len(x) != len(y) or len(y) < 6:
        raise ValueError(f"fit needs an n×5 feature matrix and n >= 6 times, got {x.shape}, {y.shape}")
    if np.any(y <= 0):
        raise ValueError("measured times must be positive")
    own = [f for f in range(5) if f not in shared]
    scale = np.maximum(x.max(axis=0), 1.0)
    xs = x / scale
    base = np.hstack([np.ones((len(x), 1)), xs[:, own]])       # per-piece columns
    tokens = x[:, P] + x[:, D]
    assign = (tokens > np.median(tokens)).astype(int) if pieces > 1 else np.zeros(len(y), int)
    theta = np.zeros((pieces, 6))
    for _ in range(iters):
        blocks = [base * (assign == k)[:, None] for k in range(pieces)] + [xs[:, list(shared)]]
        sol = _nnls(np.hstack(blocks) / y[:, None], np.ones_like(y))
        w = base.shape[1]
        theta[:] = 0
        for k in range(pieces):
            theta[k, 0] = sol[k * w]
            theta[k, [1 + f for f in own]] = sol[k * w + 1:(k + 1) * w]
            theta[k, [1 + f for f in shared]] = sol[pieces * w:]
        new = np.argmax(np.hstack([np.ones((len(x), 1)), xs]) @ theta.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    used = [k for k in range(pieces) if np.any(assign == k)] or [0]
    return PerfModel(tuple(AffinePiece(float(theta[k, 0]), tuple(float(v) for v in theta[k, 1:] / scale))
                           for k in used))


def report(model: PerfModel, x: np.ndarray, y: np.ndarray, n_train: int) -> FitReport:
    """R² and relative errors of `model` on held-out points (x, y)."""
    pred = model.times(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float)
    rel = np.abs(pred - y) / y
    under = np.maximum(0.0, (y - pred) / pred)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return FitReport(r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
                     p50_rel_err=float(np.quantile(rel, 0.5)),
                     p90_rel_err=float(np.quantile(rel, 0.9)),
                     max_rel_err=float(rel.max()), n_train=n_train, n_test=len(y),
                     suggested_margin=float(np.quantile(under, 0.9)))


def fit_and_report(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.25, seed: int = 0,
                   pieces: int = 2) -> tuple[PerfModel, FitReport]:
    """Random held-out split (fixed seed), fit on the rest, report on the held-out points.

    The returned model carries the suggested margin.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_test = max(1, int(round(len(y) * test_fraction)))
    test, train = idx[:n_test], idx[n_test:]
    model = fit(x[train], y[train], pieces=pieces)
    rep = report(model, x[test], y[test], n_train=len(train))
    return model.with_margin(min(0.5, rep.suggested_margin)), rep


class Calibrator:
    """Collects (shape, measured seconds) from live batches and refits (the `calibrate` step).

    Not thread-safe; the controller owns one per worker kind.
    """

    def __init__(self, min_points: int = 32) -> None:
        self._x: list[np.ndarray] = []
        self._y: list[float] = []
        self.min_points = min_points

    def observe(self, shape: BatchShape, seconds: float) -> None:
        if seconds > 0:
            self._x.append(shape.vector())
            self._y.append(seconds)

    def __len__(self) -> int:
        return len(self._y)

    def refit(self, seed: int = 0) -> tuple[PerfModel, FitReport]:
        """Fit on what was observed; raises ValueError below `min_points` samples."""
        if len(self._y) < self.min_points:
            raise ValueError(f"calibration needs {self.min_points} timed batches, has {len(self._y)}")
        return fit_and_report(np.array(self._x), np.array(self._y), seed=seed)
