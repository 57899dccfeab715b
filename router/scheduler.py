"""The scheduling interface and the SLO scheduler.

    plan = scheduler.schedule(snapshot)    # on arrivals, completions, stage arrivals, or a tick
    caller applies plan.decisions / plan.preempt, hands each worker plan.directive(worker_id),
    and each worker runs pool_order.form_batch(...) every iteration until the next plan.

The SLO scheduler's step:
  1. signals → overload state (policies.overload) → fallback actions;
  2. the gate for each pending request: prompt ceiling, lane cost score, overload actions,
     tenant rate limits and concurrency caps (policies.lanes / policies.tenants); then, while
     the DP is turning requests away, the size gate (policies.size_gate) holds the costliest
     recent requests out of admission so the capacity goes to the cheapest first;
  3. admission: per colocated worker the SLOs-Serve DP (dp.plan_worker) at the batch time (τ)
     among the TPOT tiers and their `batch_time_fractions` that admits the most value, from the
     end of the worker's batch in flight (Snapshot.in_flight: its chunks count as done); or the
     disaggregated planner (disagg.plan_pools) when the snapshot has prefill and decode workers;
  4. everything admissible but not admitted goes best effort; best effort that no longer fits next
     to the admitted reservations is preempted.

Promotion (colocated workers): best effort that can still meet its SLO (`promotable`: still
before its TTFT deadline, or decoding after an on-time first token and on the TPOT pace) enters
the worker's DP again next to the new requests; the ones the DP fits are promoted (Plan.promote)
and from then on guaranteed like any admitted request. Finishing a request that is already
prefilled costs one decode token per batch, far less than admitting a new one; without this, the
decode of best effort that met its TTFT starves behind admitted prefill and misses its TPOT.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from router.config import SchedulerConfig
from router.disagg import PoolDirectives, plan_pools
from router.dp import plan_worker
from router.items import candidates, merge, row_for
from router.perf_model import PerfModel
from router.plan import (BatchMode, Decision, DecisionKind, Directive, FallbackAction, Plan,
                         Snapshot, WorkerRole, WorkerState)
from router.policies.lanes import choose_lanes, memory_limit
from router.policies.overload import OverloadMachine, Signals
from router.policies.size_gate import SizeGate
from router.policies.tenants import TenantLimiter, TenantVerdict, fairness_factors
from router.request import Admission, Lane, Phase, RequestState

ADMIT, BEST_EFFORT, REJECT, DEFER = (DecisionKind.ADMIT, DecisionKind.BEST_EFFORT, DecisionKind.REJECT,
                                     DecisionKind.DEFER)


class Scheduler(abc.ABC):
    """Contract: `schedule` reads only the snapshot (time = snapshot.now_s) and its own policy
    state, and returns a Plan with decisions for the requests whose standing changes, a directive
    for every worker, and preemptions (best-effort requests only). A request it admitted is never
    dropped: ADMITTED is final until the request is done. Deterministic for a given sequence of
    snapshots."""

    @abc.abstractmethod
    def schedule(self, snapshot: Snapshot) -> Plan:
        ...


def prefill_tokens_per_s(model: PerfModel, tau: float, prior: int = 1024) -> float:
    """Prefill throughput of one worker at batch time tau (for signals and capacity estimates)."""
    return model.max_prefill_tokens(tau, prior=prior) / tau


@dataclass(frozen=True)
class _Pending:
    """The pending requests and the columns every stage of the step reads (one pass each)."""

    states: list[RequestState]
    requests: list
    prompt: np.ndarray
    arrival: np.ndarray
    ttft: np.ndarray

    @staticmethod
    def of(states: list[RequestState]) -> "_Pending":
        reqs = [r.request for r in states]
        first = [q.stages[0] for q in reqs]
        n = len(reqs)
        return _Pending(states, reqs, np.fromiter((s.input_tokens for s in first), float, n),
                        np.fromiter((q.arrival_s for q in reqs), float, n),
                        np.fromiter((s.slo.ttft_s for s in first), float, n))


def promotable(r: RequestState, start_s: float) -> bool:
    """A best-effort request the DP may still admit with its SLO intact: its first stage, with no
    later stage that appends a prompt (a later prefill is reserved as a rate over every batch
    until it arrives, too costly to hold for a request that is already running), and either
    waiting for prefill before its TTFT deadline, or decoding after a first token on time with no
    token behind the TPOT pace. `start_s`: when the worker's next batch starts (after the one in
    progress, which may leave this request out); the next token then comes within τ ≤ TPOT of it,
    and every later one within τ of the one before."""
    if r.admission is not Admission.BEST_EFFORT or r.stage > 0 or any(s.input_tokens for s in r.future_stages):
        return False
    if r.phase is Phase.WAITING:
        return r.ttft_deadline_s > start_s
    if r.phase is not Phase.DECODING or r.first_token_s is None or r.remaining_decode <= 0:
        return False
    return (r.first_token_s <= r.ttft_deadline_s
            and start_s - r.first_token_s <= max(0, r.decoded - 1) * r.current.slo.tpot_s)


class SloScheduler(Scheduler):
    """SLOs-Serve admission with lanes, tenants and overload states (see the module docstring)."""

    def __init__(self, model: PerfModel, config: SchedulerConfig | None = None,
                 transfer_s: Callable[[int], float] | None = None) -> None:
        """`transfer_s(tokens)`: KV transfer seconds between a prefill and a decode worker
        (kv_model.Link.transfer_s); used only for disaggregated snapshots."""
        self.config = config or SchedulerConfig()
        m = self.config.safety_margin
        self.model = model if m is None else model.with_margin(m)
        self.transfer_s = transfer_s or (lambda tokens: 0.0)
        self.overload = OverloadMachine(self.config.overload)
        self.tenants = TenantLimiter(self.config)
        self.size_gate = SizeGate(self.config.size_gate, self.model)
        self._rate_passed: set[str] = set()
        self._tau: dict[str, float] = {}
        self._directives = PoolDirectives()              # the last step's disaggregated directives

    # ---- 1. signals ----------------------------------------------------------------------
    def _signals(self, snap: Snapshot, pend: "_Pending", admitted: list[RequestState],
                 best: list[RequestState]) -> Signals:
        now = snap.now_s
        phase_w = Phase.WAITING
        waiting = [r for r in admitted if r.phase is phase_w and r.remaining_prefill > 0]
        best_waiting = [r for r in best if r.phase is phase_w]
        waiting += best_waiting
        first = min(([float(pend.arrival.min())] if len(pend.arrival) else [])
                    + [r.arrived_s for r in best_waiting], default=now)
        cap = sum([w.kv_capacity_tokens for w in snap.workers])
        used = sum([r.reserved_tokens for r in admitted])
        per_tau: dict[float, float] = {}         # one throughput per distinct batch time
        rate = 0.0
        tau_of, idle, decode = self._tau.get, self.config.idle_batch_time_s, WorkerRole.DECODE
        for w in snap.workers:
            if w.role is not decode:
                tau = tau_of(w.id, idle)
                v = per_tau.get(tau)
                if v is None:
                    v = per_tau[tau] = prefill_tokens_per_s(self.model, tau)
                rate += v
        ratio = 0.0
        if rate > 0 and (waiting or len(pend.arrival)):
            backlog = (sum(r.remaining_prefill for r in waiting) + float(pend.prompt.sum())) / rate
            if len(pend.arrival):
                ratio = float(np.max((now - pend.arrival + backlog) / pend.ttft))
            ratio = max([ratio] + [(now - r.arrived_s + backlog) / r.current.slo.ttft_s for r in waiting])
        return Signals(now - first, ratio, used / cap if cap else 0.0)

    # ---- 2. the gate ---------------------------------------------------------------------
    def _gate(self, snap: Snapshot, pend: "_Pending", live: list[RequestState],
              decisions: list[Decision]) -> list[tuple[RequestState, Lane]]:
        cfg, now = self.config, snap.now_s
        actions = self.overload.actions
        reject_others = FallbackAction.REJECT_RETRY_AFTER in actions
        pause_bg = FallbackAction.PAUSE_BACKGROUND in actions
        cap_tokens = cfg.overload.degraded_max_tokens if FallbackAction.CAP_MAX_TOKENS in actions else None
        limited = {t for t, lim in cfg.tenants.items()
                   if lim.requests_per_s or lim.tokens_per_s or lim.max_concurrent}
        default_limited = bool(cfg.default_tenant.requests_per_s or cfg.default_tenant.tokens_per_s
                               or cfg.default_tenant.max_concurrent)
        pending, n = pend.states, len(pend.states)
        lanes, rejected = choose_lanes(pend.requests, cfg.cost, pend.prompt)
        too_long = pend.prompt > cfg.max_prompt_tokens
        if not (reject_others or pause_bg or cap_tokens or limited or default_limited
                or rejected.any() or too_long.any()):
            return list(zip(pending, lanes))          # nothing to screen: the common case
        active: dict[str, int] = {}
        for r in live:
            active[r.request.tenant] = active.get(r.request.tenant, 0) + 1
        inter = np.fromiter((lane is Lane.INTERACTIVE for lane in lanes), bool, n)
        bg = np.fromiter((lane is Lane.BACKGROUND for lane in lanes), bool, n)
        others = ~too_long & ~rejected & ~inter & reject_others
        paused = ~too_long & ~rejected & ~others & bg & pause_bg
        self.overload.applied(FallbackAction.REJECT_RETRY_AFTER, int(others.sum()))
        self.overload.applied(FallbackAction.PAUSE_BACKGROUND, int(paused.sum()))
        for i in np.flatnonzero(too_long | rejected | others | paused).tolist():
            r, lane = pending[i], lanes[i]
            if too_long[i]:
                decisions.append(Decision(r.id, REJECT, lane, reason="prompt_too_long"))
            elif rejected[i]:
                decisions.append(Decision(r.id, REJECT, lane, reason="cost_score"))
            elif others[i]:
                decisions.append(Decision(r.id, REJECT, lane, reason="interactive_only",
                                          retry_after_s=cfg.overload.retry_after_s))
            else:
                decisions.append(Decision(r.id, DEFER, lane, reason="background_paused"))
        out = []
        for i in np.flatnonzero(~(too_long | rejected | others | paused)).tolist():
            r, lane = pending[i], lanes[i]
            req = r.request
            tenant = req.tenant
            if tenant in limited or (default_limited and tenant not in cfg.tenants):
                first = req.id not in self._rate_passed
                check = self.tenants.check(tenant, req.prompt_tokens if first else 0,
                                           active.get(tenant, 0), now, consume=first)
                if check.verdict is TenantVerdict.RATE_LIMITED:
                    decisions.append(Decision(r.id, REJECT, lane, reason="rate_limited",
                                              retry_after_s=check.retry_after_s))
                    continue
                if check.verdict is TenantVerdict.CONCURRENCY_CAPPED:
                    decisions.append(Decision(r.id, DEFER, lane, reason="tenant_concurrency"))
                    continue
                self._rate_passed.add(req.id)
                active[tenant] = active.get(tenant, 0) + 1
            if cap_tokens is not None and not inter[i] and \
                    any(st.max_output_tokens > cap_tokens for st in req.stages):
                self.overload.applied(FallbackAction.CAP_MAX_TOKENS)
                r = replace(r, max_tokens_cap=cap_tokens)
            out.append((r, lane))
        return out

    # ---- 2b. the size gate -----------------------------------------------------------------
    def _size_gated(self, gated: list[tuple[RequestState, Lane]]) -> list[tuple[RequestState, Lane]]:
        """The gated requests the DP may consider: while the size gate is closed, those whose
        cost is above its threshold skip admission."""
        limit = self.size_gate.threshold()
        if limit == math.inf or not gated:
            return gated
        costs = self.size_gate.costs([r.request for r, _ in gated])
        return [g for g, c in zip(gated, costs.tolist()) if c <= limit]

    def _size_gate_update(self, now: float, gated, candidates, admitted, deferred) -> None:
        if not self.config.size_gate.enabled:
            return
        turned_away = sum(1 for r, _ in candidates if r.id not in admitted and r.id not in deferred)
        self.size_gate.observe([r.request for r, _ in gated if r.id not in deferred])
        self.size_gate.update(now, turned_away)

    def _promotable(self, resident: list[RequestState], start: float) -> list[RequestState]:
        """The worker's best effort that may be promoted; while the size gate is closed, waiting
        ones above its threshold stay out (as they did when they arrived)."""
        out = [r for r in resident if r.admission is Admission.BEST_EFFORT and promotable(r, start)]
        limit = self.size_gate.threshold()
        wait = [r for r in out if r.phase is Phase.WAITING]
        if limit == math.inf or not wait:
            return out
        over = {r.id for r, c in zip(wait, self.size_gate.costs([r.request for r in wait]).tolist()) if c > limit}
        return [r for r in out if r.id not in over]

    # ---- 3. colocated admission ----------------------------------------------------------
    def _taus(self, w: WorkerState, forced: list[RequestState], tiers: set[float]) -> list[float]:
        """Candidate batch times: the TPOT tiers no looser than the tightest admitted one, their
        `batch_time_fractions` (not below `min_batch_time_s`), and the worker's current τ."""
        cfg = self.config
        bound = min((r.tightest_remaining_tpot_s for r in forced), default=math.inf)
        tiers = tiers | {r.tightest_remaining_tpot_s for r in forced}
        tiers = tiers | {t * f for t in tiers if math.isfinite(t) for f in cfg.batch_time_fractions
                         if t * f >= cfg.min_batch_time_s}
        if w.id in self._tau:
            tiers.add(self._tau[w.id])
        taus = sorted(t for t in tiers if t <= bound)
        return taus or [min(bound, self.config.idle_batch_time_s)]

    def _admit_colocated(self, snap: Snapshot, workers: list[WorkerState],
                         by_worker: dict[str, list[RequestState]], gated: list[tuple[RequestState, Lane]],
                         values: list[float]):
        cfg = self.config
        cands = candidates([r for r, _ in gated], [lane is Lane.INTERACTIVE for _, lane in gated], values)
        admitted: dict[str, tuple[str, str]] = {}
        deferred: set[str] = set()
        directives, at_risk, promoted = [], [], []
        now = snap.now_s
        lanes = cfg.lanes
        fly = snap.in_flight.get
        pool = np.arange(len(gated))
        tiers = set(np.unique(cands.tpot).tolist())
        used = {w.id: sum(r.reserved_tokens for r in by_worker[w.id] if r.admission is Admission.ADMITTED)
                for w in workers}
        for w in sorted(workers, key=lambda w: used[w.id] / w.kv_capacity_tokens):
            forced = [r for r in by_worker[w.id] if r.admission is Admission.ADMITTED]
            promo = self._promotable(by_worker[w.id], max(now, w.busy_until_s)) if cfg.promote_best_effort else []
            taus = self._taus(w, forced, tiers | {r.tightest_remaining_tpot_s for r in promo})
            tau = min(taus)
            if forced or pool.size or promo:
                rows = [row_for(r, True, True, True, 0, math.inf, 0.0, fly(r.id, 0)) for r in forced]
                rows += [row_for(r, False, True, True, r.reserved_tokens,
                                 memory_limit(r.request.lane, w.kv_capacity_tokens, cfg.interactive_kv_reserve),
                                 lanes[r.request.lane].value, fly(r.id, 0)) for r in promo]
                items = merge(rows, cands, pool, w.kv_capacity_tokens,
                              memory_limit(Lane.HEAVY, w.kv_capacity_tokens, cfg.interactive_kv_reserve))
                res = plan_worker(items, self.model, max(snap.now_s, w.busy_until_s), used[w.id],
                                  taus, cfg.dp_window, cfg.dp_labels, cfg.greedy_rounds, cfg.horizon_s,
                                  cfg.later_stage_reserve, self._tau.get(w.id))
                tau = res.tau_s
                ids = {r.id for r in promo}
                for rid in res.admitted:
                    if rid in ids:
                        promoted.append(rid)
                    else:
                        admitted[rid] = (w.id, w.id)
                deferred |= set(res.deferred)
                at_risk += list(res.at_risk)
                if res.admitted or res.deferred:
                    taken = (set(res.admitted) | set(res.deferred)) - ids
                    pool = pool[np.fromiter((cands.ids[i] not in taken for i in pool.tolist()), bool, pool.size)]
            self._tau[w.id] = tau
            directives.append(Directive(w.id, BatchMode.SLO, tau, 0, urgency=cfg.urgency_order))
        return admitted, deferred, directives, at_risk, promoted

    # ---- the step ------------------------------------------------------------------------
    def schedule(self, snapshot: Snapshot) -> Plan:
        snap, cfg = snapshot, self.config
        workers = [w for w in snap.workers if w.healthy]
        if not workers:
            raise ValueError("no healthy worker in the snapshot")
        pending, admitted_live, best = [], [], []
        done, waiting = Phase.DONE, Phase.WAITING          # (locals: this runs per request per step)
        a_pending, a_admitted, a_best = Admission.PENDING, Admission.ADMITTED, Admission.BEST_EFFORT
        for r in snap.requests:
            if r.phase is done:
                continue
            a = r.admission
            if a is a_pending:
                pending.append(r)
            elif a is a_admitted:
                admitted_live.append(r)
            elif a is a_best:
                best.append(r)
        by_worker: dict[str, list[RequestState]] = {w.id: [] for w in snap.workers}
        for r in admitted_live + best:
            wid = r.decode_worker if r.phase is not waiting and r.decode_worker else r.prefill_worker
            if wid in by_worker:
                by_worker[wid].append(r)
        pend = _Pending.of(pending)
        self.overload.step(self._signals(snap, pend, admitted_live, best), snap.now_s)
        decisions: list[Decision] = []
        gated = self._gate(snap, pend, admitted_live + best, decisions)
        usage: dict[str, float] = {}
        for r in admitted_live:
            usage[r.request.tenant] = usage.get(r.request.tenant, 0.0) + r.reserved_tokens
        fair = fairness_factors(usage, {r.request.tenant for r, _ in gated}, cfg)
        lane_value = {lane: c.value for lane, c in cfg.lanes.items()}
        candidates = self._size_gated(gated)
        values = [lane_value[lane] * fair[r.request.tenant] for r, lane in candidates]
        if any(w.role is not WorkerRole.COLOCATED for w in workers):    # a prefill or decode worker
            res = plan_pools(snap, workers, candidates, dict(zip((r.id for r, _ in candidates), values)),
                             self.model, cfg, self._tau, self.transfer_s, self._directives)
            admitted, deferred, directives, at_risk = res.admitted, res.deferred, res.directives, res.at_risk
            promoted = []
        else:
            admitted, deferred, directives, at_risk, promoted = self._admit_colocated(snap, workers, by_worker,
                                                                                      candidates, values)
        self._size_gate_update(snap.now_s, gated, candidates, admitted, deferred)
        held_out = {r.id for r, _ in gated} - {r.id for r, _ in candidates} if len(candidates) < len(gated) else ()
        decisions += self._decide(workers, by_worker, gated, admitted, deferred, held_out)
        preempt = self._preempt(workers, by_worker, gated, admitted, set(promoted)) if best else []
        if FallbackAction.PAUSE_BACKGROUND in self.overload.actions:
            preempt += [r.id for r in best if r.request.lane is Lane.BACKGROUND and r.id not in preempt
                        and (r.context_tokens > 0 or r.phase is not Phase.WAITING)]
        if len(self._rate_passed) > 4 * len(pending) + 1024:
            self._rate_passed &= {r.id for r in pending}
        stats = {"pending": len(pending), "admitted": len(admitted), "promoted": len(promoted),
                 "size_gate_quantile": self.size_gate.q}
        return Plan(snap.now_s, tuple(decisions), tuple(directives), tuple(preempt), self.overload.state,
                    self.overload.actions, tuple(at_risk), stats, tuple(promoted))

    # ---- 4. best effort and preemption ---------------------------------------------------
    def _decide(self, workers, by_worker, gated, admitted, deferred, held_out=()) -> list[Decision]:
        """ADMIT for the admitted; the rest of the gated go best effort on the worker with the
        most free (unreserved) KV, or are rejected when their lane has no best effort. `held_out`:
        requests the size gate kept out of admission (their reason says so)."""
        free: dict[str, int] = {}

        def free_kv() -> dict[str, int]:      # built at the first best-effort decision only
            if not free:
                free.update({w.id: w.kv_capacity_tokens - sum(r.reserved_tokens for r in by_worker[w.id])
                             for w in workers})
                reserved = {r.request.id: r.reserved_tokens for r, _ in gated if r.request.id in admitted}
                for rid, pw in admitted.items():
                    free[pw[1]] -= reserved[rid]
            return free

        split: list = []

        def roles() -> list:                    # (targets, decoders, one), also built lazily
            if not split:
                targets = [w for w in workers if w.role is not WorkerRole.DECODE]
                decoders = [w for w in workers if w.role is WorkerRole.DECODE]
                split.extend((targets, decoders, targets[0] if len(targets) == 1 and len(decoders) <= 1 else None))
            return split

        lanes = self.config.lanes
        out = []
        for r, lane in gated:
            rid = r.request.id
            pw = admitted.get(rid)
            if pw is not None:
                out.append(Decision(rid, ADMIT, lane, pw[0], pw[1], r.max_tokens_cap))
            elif rid in deferred:
                out.append(Decision(rid, DEFER, lane, reason="dp_rounds"))
            elif not lanes[lane].best_effort:
                out.append(Decision(rid, REJECT, lane, reason="size_gate" if rid in held_out else "not_admissible",
                                    retry_after_s=self.config.overload.retry_after_s))
            else:
                fr = free_kv()
                targets, decoders, one = roles()
                w = one or max(targets, key=lambda w: fr[w.id])
                dw = (max(decoders, key=lambda x: fr[x.id]).id if decoders else w.id)
                if one is None:                 # a choice was made: the next one sees this one
                    fr[w.id] -= r.reserved_tokens
                    if decoders:
                        fr[dw] -= r.reserved_tokens
                out.append(Decision(rid, BEST_EFFORT, lane, w.id, dw, r.max_tokens_cap,
                                    reason="size_gate" if rid in held_out else "no_slo_capacity"))
        return out

    def _preempt(self, workers, by_worker, gated, admitted, promoted=frozenset()) -> list[str]:
        """Best-effort work that no longer fits next to the admitted reservations (`promoted`
        ones count as admitted), latest first. Only workers holding started best-effort work can
        have anything to preempt."""
        out = []
        started = {}
        for w in workers:
            be = [r for r in by_worker[w.id] if r.admission is Admission.BEST_EFFORT and r.id not in promoted
                  and (r.context_tokens > 0 or r.phase is not Phase.WAITING)]
            if be:
                started[w.id] = be
        if not started:
            return out
        new: dict[str, int] = {}                 # reservations admitted in this step, per worker
        reserved = {r.request.id: r.reserved_tokens for r, _ in gated if r.request.id in admitted}
        for rid, pair in admitted.items():
            for wid in set(pair):
                new[wid] = new.get(wid, 0) + reserved[rid]
        for w in workers:
            be = started.get(w.id)
            if be is None:
                continue
            adm = sum(r.reserved_tokens for r in by_worker[w.id]
                      if r.admission is Admission.ADMITTED or r.id in promoted)
            adm += new.get(w.id, 0)
            be.sort(key=lambda r: (r.request.arrival_s, r.id))
            held = adm + sum(r.reserved_tokens for r in be)
            while be and held > w.kv_capacity_tokens:
                r = be.pop()
                held -= r.reserved_tokens
                out.append(r.id)
        return out
