"""What the load generator sends: a trace (or a synthetic mix) turned into planned requests.

    trace file ──sim.trace.load_rows──▶ replay (--time-scale / --rate, cut at --duration)
                                        or generated arrivals for a lengths-only file
    --synthetic ─▶ lengths ~ U[L(1-s), L(1+s)] ──sim.trace.arrivals──▶ Poisson / gamma at --rate
        ──▶ lengths × --length-scale, clipped to --context, outputs capped at --max-output-tokens
        ──sim.workload.build_requests──▶ scenario stages (reasoning, tool calling, mixed kinds);
            appended tool results are scaled too and shrunk so a conversation fits --context
        ──▶ lanes drawn from --lanes (seeded) ──▶ tuple[PlannedRequest] in arrival order

Contract: deterministic for a seed; raises ``sim.errors.SimInputError`` for bad input (unknown
format, no request inside --duration, bad lane mix). Prompt *contents* are made at send time
from (seed, index): random token ids over gRPC, random words over HTTP (``prompt_ids`` /
``prompt_words``), so the plan stays small. Stage SLOs are left to the server (it resolves the
scenario preset) unless ``ttft_ms`` / ``tpot_ms`` are set, which then apply to every stage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np

from router.perf_model import AffinePiece, PerfModel
from sim import workload as sim_workload
from sim.errors import SimInputError
from sim.trace import TraceRows, arrivals, clip, load_rows, replay

LANES = ("interactive", "heavy", "background")
# Stage shapes only: build_requests needs a perf model for its SLOs, which the load generator
# does not use (the live server resolves SLOs with its own calibrated model).
_SHAPE_ONLY_PERF = PerfModel((AffinePiece(1e-3, (1e-5, 0.0, 0.0, 0.0, 0.0)),))
_KIND_OF_TENANT = {tenant: kind.value for kind, tenant in sim_workload._TENANT.items()}
_WORDS = ("the quick brown fox jumps over a lazy dog while paged attention keeps blocks of "
          "cache in memory and prefill computes prompts before decode produces tokens one at "
          "a time under service level objectives").split()


@dataclass(frozen=True)
class LaterStage:
    """A stage after the first: ``append_tokens`` prompt tokens added after ``tool_delay_s``."""

    append_tokens: int
    max_tokens: int
    tool_delay_s: float = 0.0


@dataclass(frozen=True)
class PlannedRequest:
    """One request to send ``arrival_s`` seconds after the run starts."""

    index: int
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    lane: str = "interactive"
    scenario: str | None = None          # the preset sent to the server (a mixed row: its kind)
    stages: tuple[LaterStage, ...] = ()
    ttft_ms: float | None = None         # explicit SLO for every stage (None: the server's)
    tpot_ms: float | None = None

    @property
    def tool_delay_s(self) -> float:
        return sum(s.tool_delay_s for s in self.stages)


@dataclass(frozen=True)
class WorkloadSpec:
    """Where requests come from and how they are shaped (validated by the CLI's pydantic model)."""

    trace: str | None = None
    fmt: str | None = None
    synthetic: bool = False
    rate: float | None = None            # req/s: synthetic and lengths files; rescales a trace
    time_scale: float = 1.0              # trace replay speed-up: arrivals at t / time_scale
    cv: float = 1.0                      # generated arrivals: 1 Poisson, > 1 bursty (gamma)
    input_len: int = 128                 # synthetic lengths
    output_len: int = 64
    len_spread: float = 0.0              # synthetic: uniform in [L(1 - s), L(1 + s)]
    duration_s: float = 60.0
    max_requests: int | None = None
    scenario: str = "chatbot"
    lanes: dict[str, float] = field(default_factory=lambda: {"interactive": 1.0})
    length_scale: float = 1.0
    context: int | None = None
    max_output_tokens: int | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    seed: int = 0


def parse_lanes(text: str) -> dict[str, float]:
    """``"interactive=0.7,heavy=0.3"`` → weights (normalised later); a bare name means 1."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in LANES:
            raise SimInputError(f"unknown lane {name!r} in --lanes; known: {', '.join(LANES)}")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise SimInputError(f"--lanes: weight of {name!r} is not a number: {weight!r}") from None
    if not out or any(w < 0 for w in out.values()) or sum(out.values()) <= 0:
        raise SimInputError(f"--lanes needs non-negative weights with a positive sum, got {text!r}")
    return out


def _synthetic_rows(spec: WorkloadSpec, rng: np.random.Generator) -> TraceRows:
    def draw(length: int) -> np.ndarray:
        lo = max(1, round(length * (1 - spec.len_spread)))
        hi = max(lo, round(length * (1 + spec.len_spread)))
        return rng.integers(lo, hi + 1, size=4096).astype(np.int64)
    return TraceRows("synthetic", "lengths", None, draw(spec.input_len), draw(spec.output_len))


def timed_rows(spec: WorkloadSpec) -> TraceRows:
    """Rows with arrival times inside ``duration_s`` (before lengths are reshaped)."""
    if spec.synthetic:
        rows = _synthetic_rows(spec, np.random.default_rng(spec.seed))
    elif spec.trace:
        rows = load_rows(spec.trace, spec.fmt)
    else:
        raise SimInputError("give --trace FILE or --synthetic")
    if rows.arrival_s is None:
        if spec.rate is None:
            raise SimInputError(f"{rows.source} has no arrival times: give --rate")
        return arrivals(rows, spec.rate, spec.duration_s, seed=spec.seed, cv=spec.cv)
    if spec.time_scale <= 0:
        raise SimInputError(f"--time-scale must be positive, got {spec.time_scale}")
    rows = replace(rows, arrival_s=rows.arrival_s / spec.time_scale)
    return replay(rows, rate=spec.rate, duration_s=spec.duration_s)


def _shaped(rows: TraceRows, spec: WorkloadSpec) -> TraceRows:
    if spec.max_requests is not None:
        rows = replace(rows, arrival_s=rows.arrival_s[:spec.max_requests],
                       input_tokens=rows.input_tokens[:spec.max_requests],
                       output_tokens=rows.output_tokens[:spec.max_requests])
    if spec.length_scale != 1.0:
        scale = lambda a: np.maximum(1, np.round(a * spec.length_scale)).astype(np.int64)  # noqa: E731
        rows = replace(rows, input_tokens=scale(rows.input_tokens), output_tokens=scale(rows.output_tokens))
    if spec.context is not None:
        rows = clip(rows, spec.context)
    if spec.max_output_tokens is not None:
        rows = replace(rows, output_tokens=np.minimum(rows.output_tokens, spec.max_output_tokens))
    return rows


def _fit(prompt: int, output: int, later: list[list], context: int | None) -> int:
    """Shrink a conversation to ``context`` tokens in all: appended tokens of later stages first
    (last stage first), then the prompt (>= 1), then later outputs (>= 1). Edits ``later``
    ([append, max_tokens, delay] lists) in place; returns the prompt length."""
    if context is None:
        return prompt
    excess = prompt + output + sum(a + o for a, o, _ in later) - context
    for stage in reversed(later):
        cut = min(max(excess, 0), stage[0])
        stage[0], excess = stage[0] - cut, excess - cut
    cut = min(max(excess, 0), prompt - 1)
    prompt, excess = prompt - cut, excess - cut
    for stage in reversed(later):
        cut = min(max(excess, 0), stage[1] - 1)
        stage[1], excess = stage[1] - cut, excess - cut
    return prompt


def build_plan(spec: WorkloadSpec) -> tuple[PlannedRequest, ...]:
    """The planned requests of a run, in arrival order (see the module docstring)."""
    rows = _shaped(timed_rows(spec), spec)
    requests = sim_workload.build_requests(rows, spec.scenario, _SHAPE_ONLY_PERF, seed=spec.seed)
    names = sorted(spec.lanes)
    weights = np.array([spec.lanes[n] for n in names], dtype=float)
    lane_rng = np.random.default_rng([spec.seed, 1])
    lanes = lane_rng.choice(len(names), size=len(requests), p=weights / weights.sum())
    cap = spec.max_output_tokens
    plan = []
    for n, r in enumerate(requests):
        first = r.stages[0]
        later = [[round(s.input_tokens * spec.length_scale) if s.input_tokens else 0,
                  min(s.max_output_tokens, cap or s.max_output_tokens), s.tool_delay_s]
                 for s in r.stages[1:]]
        prompt = _fit(int(first.input_tokens), int(first.max_output_tokens), later, spec.context)
        stages = tuple(LaterStage(a, o, d) for a, o, d in later)
        plan.append(PlannedRequest(n, float(r.arrival_s), prompt, int(first.max_output_tokens),
                                   names[int(lanes[n])], _KIND_OF_TENANT.get(r.tenant, spec.scenario),
                                   stages, spec.ttft_ms, spec.tpot_ms))
    return tuple(plan)


def token_range(vocab_size: int) -> tuple[int, int]:
    """Ids from the middle of the vocabulary (away from special tokens), as bench.workload."""
    return min(100, vocab_size // 4), max(vocab_size - 100, vocab_size * 3 // 4)


def prompt_ids(n: int, vocab_size: int, seed: int, index: int, part: int = 0) -> list[int]:
    """``n`` random token ids, deterministic for (seed, index, part)."""
    rng = random.Random(f"{seed}:{index}:{part}")
    lo, hi = token_range(vocab_size)
    return [rng.randrange(lo, hi) for _ in range(n)]


def prompt_words(n: int, seed: int, index: int, part: int = 0) -> str:
    """A text of ``n`` random words (roughly ``n`` tokens for most tokenizers)."""
    rng = random.Random(f"{seed}:{index}:{part}")
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n)))
