"""Batch formation inside a worker, following the plan's directive. Called every iteration.

SLO mode (colocated, the plan's guarantee):

    budget B (token equivalents, PerfModel.budget at the directive's τ)
    ├─ every admitted decoding request: 1 token, costs w(ctx)            (mandatory)
    ├─ admitted prefill chunks by deadline (or most urgent first), until B is spent
    └─ leftovers: best-effort decode (shortest remaining first), then best-effort prefill:
       the ones that can still meet their TTFT first; late ones only in a batch with no admitted
       prefill waiting (a new best-effort request starts only while its KV reservation fits)

Admitted work is placed before any best-effort work and the budget is the same with or without
best effort, so best effort never takes tokens from admitted requests and every batch stays
within τ. Baseline modes (CHUNKED, PREFILL_FIRST, and the disaggregated FCFS pools) follow
`directive.order` and token budgets instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from router.perf_model import BatchShape, Budget, PerfModel, attention_pairs
from router.plan import BatchMode, Directive
from router.request import Admission, Phase, RequestState


@dataclass(frozen=True)
class Chunk:
    request_id: str
    tokens: int
    prior: int          # KV tokens before the chunk


@dataclass(frozen=True)
class Batch:
    """One iteration. `decode` ids each produce one token; the last chunk of a stage emits its first."""

    worker_id: str
    chunks: tuple[Chunk, ...]
    decode: tuple[str, ...]
    shape: BatchShape
    predicted_s: float

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.decode


def urgency_order(waiting: Iterable[RequestState], now_s: float, seconds_per_token: float) -> list[RequestState]:
    """Prefill work ranked by urgency: slack = TTFT deadline − predicted no-load completion.

    The request most in danger (least slack) goes first; ties go to the earlier deadline.
    Note: this least-slack order is not what the DP's guarantee is proved for (EDF is); under it
    the scheduler may report admitted requests `at_risk` that EDF would have kept on track.
    """
    return sorted(waiting, key=lambda r: (r.ttft_deadline_s - now_s - r.remaining_prefill * seconds_per_token,
                                          r.ttft_deadline_s, r.id))


def deadline_order(waiting: Iterable[RequestState]) -> list[RequestState]:
    """Prefill work by TTFT deadline (EDF): the order the DP's feasibility argument is made for."""
    return sorted(waiting, key=lambda r: (r.ttft_deadline_s, r.id))


def pack_decode(mandatory: list[RequestState], optional: list[RequestState], model: PerfModel,
                limit_s: float) -> list[RequestState]:
    """Decode set: all mandatory sequences, then optional ones shortest-remaining first while the
    predicted (with margin) step time stays within `limit_s` (the tightest TPOT in the batch)."""
    chosen = list(mandatory)
    ctx = sum(r.context_tokens for r in chosen)
    for r in sorted(optional, key=lambda r: (r.remaining_decode, r.id)):
        limit = min(limit_s, r.current.slo.tpot_s)
        shape = BatchShape(decode_tokens=len(chosen) + 1, decode_context=ctx + r.context_tokens,
                           num_seqs=len(chosen) + 1)
        if model.planned_time(shape) <= limit:
            chosen.append(r)
            ctx += r.context_tokens
            limit_s = limit
    return chosen


def _decoding(r: RequestState) -> bool:
    return r.phase is Phase.DECODING or (r.phase is Phase.WAITING and r.remaining_prefill == 0)


def _started(r: RequestState) -> bool:
    return r.prefilled > 0 or r.phase is not Phase.WAITING or r.stage > 0


def _shape(chunks: list[Chunk], decode: list[RequestState]) -> BatchShape:
    return BatchShape(prefill_tokens=sum(c.tokens for c in chunks), decode_tokens=len(decode),
                      decode_context=sum(r.context_tokens for r in decode),
                      prefill_pairs=sum(attention_pairs(c.tokens, c.prior) for c in chunks),
                      num_seqs=len(decode) + len(chunks))


def _batch(worker_id: str, chunks: list[Chunk], decode: list[RequestState], model: PerfModel) -> Batch:
    shape = _shape(chunks, decode)
    t = model.time(shape) if chunks or decode else 0.0
    return Batch(worker_id, tuple(chunks), tuple(r.id for r in decode), shape, t)


def _slo_fill(queue: list[RequestState], cap: float, b: Budget) -> tuple[list[Chunk], float]:
    """Chunks in queue order while the linear budget has room (a chunk costs its tokens, its
    attention pairs and its sequence overhead)."""
    chunks = []
    for r in queue:
        n = b.chunk_fit(cap, r.context_tokens, r.remaining_prefill)
        if n < 1:
            break
        chunks.append(Chunk(r.id, n, r.context_tokens))
        cap -= b.prefill_cost(n, r.context_tokens) + b.per_chunk
    return chunks, cap


def _token_fill(queue: list[RequestState], budget: int, whole: bool) -> list[Chunk]:
    chunks = []
    for r in queue:
        if budget <= 0:
            break
        if whole and r.remaining_prefill > budget and chunks:
            break
        n = r.remaining_prefill if whole else min(r.remaining_prefill, budget)
        chunks.append(Chunk(r.id, n, r.context_tokens))
        budget -= n
    return chunks


def _memory_admits(queue: list[RequestState], held: int, capacity: int) -> list[RequestState]:
    """Waiting requests that may start: started ones always, new ones while their reservation
    fits next to the `held` tokens (and those admitted before them here)."""
    out = []
    for r in queue:
        if not _started(r):
            if held + r.reserved_tokens > capacity:
                continue
            held += r.reserved_tokens
        out.append(r)
    return out


def _best_effort_order(waiting: list[RequestState], now_s: float, tau: float,
                       admitted_prefill: bool) -> list[RequestState]:
    """Best-effort prefill in the order it may use a batch's leftover budget: first the requests
    that can still meet their TTFT (deadline at least one batch away), in arrival order; then the
    late ones, only when no admitted prefill is waiting on the worker. A late request has missed
    its SLO already, and filling a batch that carries admitted prefill makes that batch last the
    whole τ, which delays the next one: it takes away the head start the admitted requests (and
    the ones admitted next) would get from a shorter batch."""
    key = lambda r: (r.request.arrival_s, r.id)          # noqa: E731
    soon = now_s + tau
    on_time = sorted((r for r in waiting if r.ttft_deadline_s >= soon), key=key)
    if admitted_prefill:
        return on_time
    return on_time + sorted((r for r in waiting if r.ttft_deadline_s < soon), key=key)


def _ordered(waiting: list[RequestState], order: tuple[str, ...]) -> list[RequestState]:
    rank = {rid: i for i, rid in enumerate(order)}
    return sorted(waiting, key=lambda r: (rank.get(r.id, len(rank)), r.request.arrival_s, r.id))


def form_batch(now_s: float, resident: list[RequestState], directive: Directive, model: PerfModel,
               kv_capacity: int) -> Batch:
    """The next batch of one worker from the requests resident on it (see the module docstring).

    `resident`: requests whose KV lives (or will live) on this worker and that are ADMITTED or
    BEST_EFFORT; phases TOOL_WAIT/DONE are ignored. Never mutates anything.
    """
    live = [r for r in resident if r.phase in (Phase.WAITING, Phase.DECODING)
            and r.admission in (Admission.ADMITTED, Admission.BEST_EFFORT)]
    dec = [r for r in live if _decoding(r)]
    wait = [r for r in live if r.phase is Phase.WAITING and r.remaining_prefill > 0]
    mode = directive.mode
    if mode in (BatchMode.SLO, BatchMode.PREFILL_ONLY) and not directive.order:
        b = model.budget(directive.batch_time_s)
        adm_dec = [r for r in dec if r.admission is Admission.ADMITTED] if mode is BatchMode.SLO else []
        cap = b.tokens - sum(b.decode_cost(r.context_tokens) for r in adm_dec)
        adm_wait = [r for r in wait if r.admission is Admission.ADMITTED]
        if directive.urgency:
            adm_wait = urgency_order(adm_wait, now_s, directive.batch_time_s / b.tokens if b.tokens > 0 else 0.0)
        else:
            adm_wait = deadline_order(adm_wait)
        chunks, cap = _slo_fill(adm_wait, cap, b)
        decode = list(adm_dec)
        if mode is BatchMode.SLO:
            for r in sorted((r for r in dec if r.admission is Admission.BEST_EFFORT),
                            key=lambda r: (r.remaining_decode, r.id)):
                cost = b.decode_cost(r.context_tokens)
                if cost <= cap:
                    decode.append(r)
                    cap -= cost
        be_wait = _best_effort_order([r for r in wait if r.admission is Admission.BEST_EFFORT], now_s,
                                     directive.batch_time_s, admitted_prefill=bool(adm_wait))
        # a new best-effort request starts only while its reservation fits next to every admitted
        # reservation (started or not: the plan counted on them) and the started best effort;
        # without this best effort overcommits KV between plans (preemption catches it only then)
        held = sum(r.reserved_tokens for r in live if r.admission is Admission.ADMITTED or _started(r))
        more, _ = _slo_fill(_memory_admits(be_wait, held, kv_capacity), cap, b)
        return _batch(directive.worker_id, chunks + more, decode, model)
    if mode is BatchMode.DECODE_ONLY:
        mandatory = [r for r in dec if r.admission is Admission.ADMITTED]
        optional = [r for r in dec if r.admission is Admission.BEST_EFFORT]
        return _batch(directive.worker_id, [], pack_decode(mandatory, optional, model,
                                                           directive.batch_time_s), model)
    queue = _memory_admits(_ordered(wait, directive.order), sum(r.reserved_tokens for r in live if _started(r)),
                           kv_capacity)
    if mode is BatchMode.PREFILL_ONLY:
        return _batch(directive.worker_id, _token_fill(queue, directive.token_budget, False), [], model)
    if mode is BatchMode.PREFILL_FIRST:
        fresh = [r for r in queue if r.prefilled == 0]
        if fresh:
            return _batch(directive.worker_id, _token_fill(fresh, directive.token_budget, True), [], model)
        return _batch(directive.worker_id, _token_fill(queue, directive.token_budget, False), dec, model)
    return _batch(directive.worker_id, _token_fill(queue, directive.token_budget - len(dec), False),
                  dec, model)
