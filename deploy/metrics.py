"""Prometheus metrics of the serving front: vLLM's names where vLLM has one, ``tandem_*`` otherwise.

Two feeds, one registry (never the process-global one)::

    front, per stream item:  metrics.observe_item(item, model_name, lane, tenant)
    scrape handler:          metrics.update_from_stats(await backend.stats())
                             body, content_type = metrics.render()

Per-request series come from the items this front streams, so they add up across fronts
(``sum`` in queries). Cluster series come from ``ClusterStats``, which every front reads whole,
so queries take ``max`` across fronts. Cluster totals become counters that only move forward
(``deploy.metric_series.CumulativeCounter``: the exported value is the max of the totals seen).

Series (``model_name`` on every ``vllm:`` series):
    from items   vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds,
                 vllm:request_time_per_output_token_seconds, vllm:e2e_request_latency_seconds,
                 vllm:request_success_total{finished_reason},
                 tandem_queue_wait_seconds{lane}, tandem_stage_ttft_seconds{lane},
                 tandem_stage_tpot_seconds{lane}, tandem_slo_stages_total{lane,stage,outcome},
                 tandem_slo_attainment_ratio{lane,stage}, tandem_slo_checks_total{lane,slo,outcome},
                 tandem_tenant_requests_total{tenant,outcome}
    from stats   vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc
                 (mean over workers, a fraction), vllm:prompt_tokens_total,
                 vllm:generation_tokens_total, tandem_admission_decisions_total{lane,decision},
                 tandem_lane_queued{lane}, tandem_overload_state{state},
                 tandem_fallback_activations_total{action}, tandem_kv_handoff_bytes_total,
                 tandem_kv_handoffs_total, tandem_kv_handoff_seconds_total,
                 tandem_request_retries_total, tandem_worker_busy_fraction{worker,role},
                 tandem_worker_kv_usage_ratio{worker,role}, tandem_tenant_running{tenant},
                 tandem_worker_healthy{worker,role}, tandem_worker_restarts_total{worker,role},
                 tandem_size_gate_quantile (1: open; lower: the costliest requests skip admission)

Stage labels are the stage index, with every index from ``MAX_STAGE_LABEL`` on folded into
``"<MAX>+"`` to bound cardinality. Calls are serialised by one lock, so a scrape never sees a
half-applied stats update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

from cluster.api import Admitted, ClusterStats, Failed, Finished, StageDone, StreamItem, TokenChunk
from deploy.metric_series import CumulativeCounter, LabelledGauge
from deploy.request_timing import RequestTimer
from router.plan import OverloadState

# vLLM's buckets (vllm/v1/metrics/loggers.py) so its dashboards read ours unchanged.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0)
MAX_STAGE_LABEL = 4


def _label(value: object) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _stage_label(stage: int) -> str:
    return str(stage) if stage < MAX_STAGE_LABEL else f"{MAX_STAGE_LABEL}+"


class ServingMetrics:
    """Owns a ``CollectorRegistry``; ``model_name`` labels the ``vllm:`` series fed from stats.

    ``clock`` (default ``time.monotonic``) times requests; see ``deploy.request_timing``.
    """

    def __init__(self, model_name: str = "tandem", clock: Callable[[], float] = time.monotonic):
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._timer = RequestTimer(clock)
        self._stages: dict[tuple[str, str], list[int]] = {}   # (lane, stage) → [met, total]
        self._dispatch = {Admitted: self._on_admitted, TokenChunk: self._on_tokens,
                          StageDone: self._on_stage, Finished: self._on_finished,
                          Failed: self._on_failed}
        self._define_item_series()
        self._define_stats_series()

    # ── definitions ─────────────────────────────────────────────────────────────────────────
    def _define_item_series(self) -> None:
        r, m = self.registry, ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", m,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between tokens.", m,
                             buckets=TOKEN_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Mean time per output token of a request.", m,
                              buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", m,
                             buckets=E2E_BUCKETS, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.",
                               m + ["finished_reason"], registry=r)
        self.queue_wait = Histogram("tandem_queue_wait_seconds", "Arrival to scheduling decision.",
                                    ["lane"], buckets=QUEUE_BUCKETS, registry=r)
        self.stage_ttft = Histogram("tandem_stage_ttft_seconds", "Per-stage TTFT (controller).",
                                    ["lane"], buckets=TTFT_BUCKETS, registry=r)
        self.stage_tpot = Histogram("tandem_stage_tpot_seconds", "Per-stage TPOT (controller).",
                                    ["lane"], buckets=TOKEN_BUCKETS, registry=r)
        self.slo_stages = Counter("tandem_slo_stages", "Stages that met or missed their SLO.",
                                  ["lane", "stage", "outcome"], registry=r)
        self.slo_ratio = Gauge("tandem_slo_attainment_ratio",
                               "Met / finished stages since start.", ["lane", "stage"], registry=r)
        self.slo_checks = Counter("tandem_slo_checks", "Per-stage TTFT and TPOT checks.",
                                  ["lane", "slo", "outcome"], registry=r)
        self.tenant_requests = Counter("tandem_tenant_requests", "Ended requests by tenant.",
                                       ["tenant", "outcome"], registry=r)

    def _define_stats_series(self) -> None:
        r, m = self.registry, ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests decoding.", m, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", m, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV usage, 1 = full (mean of workers).",
                              m, registry=r)
        wr = ["worker", "role"]
        cum = {
            "prompt": ("vllm:prompt_tokens", "Prefilled prompt tokens.", m),
            "generation": ("vllm:generation_tokens", "Generated tokens.", m),
            "admission": ("tandem_admission_decisions", "Scheduling decisions.",
                          ["lane", "decision"]),
            "fallback": ("tandem_fallback_activations", "Overload fallback activations.",
                         ["action"]),
            "handoff_bytes": ("tandem_kv_handoff_bytes", "KV bytes moved prefill → decode.", []),
            "handoffs": ("tandem_kv_handoffs", "KV handoffs.", []),
            "handoff_s": ("tandem_kv_handoff_seconds", "Handoff time (receive + import).", []),
            "retries": ("tandem_request_retries", "Re-prefills after failures.", []),
            "restarts": ("tandem_worker_restarts", "Worker restarts.", wr),
        }
        self._cum = {k: CumulativeCounter(Counter(n, h, labels, registry=r))
                     for k, (n, h, labels) in cum.items()}
        gauges = {
            "queued": ("tandem_lane_queued", "Requests waiting, by lane.", ["lane"]),
            "overload": ("tandem_overload_state", "1 for the current overload state.", ["state"]),
            "busy": ("tandem_worker_busy_fraction", "Fraction of the last window in steps.", wr),
            "worker_kv": ("tandem_worker_kv_usage_ratio", "Fraction of KV blocks referenced.", wr),
            "tenants": ("tandem_tenant_running", "Running requests by tenant.", ["tenant"]),
            "healthy": ("tandem_worker_healthy", "1 if the worker is healthy.", wr),
        }
        self._size_gate = Gauge("tandem_size_gate_quantile", "The scheduler's size gate quantile (1: open; "
                                "lower: requests above that quantile of recent costs skip admission).",
                                registry=r)
        self._gauges = {k: LabelledGauge(Gauge(n, h, labels, registry=r))
                        for k, (n, h, labels) in gauges.items()}

    # ── per-item feed ───────────────────────────────────────────────────────────────────────
    def observe_item(self, item: StreamItem, model_name: str, lane: object, tenant: str) -> None:
        """Record one stream item, in stream order, as the front yields it to its client.

        Every item of a request must come through here, ending with its ``Finished`` or
        ``Failed``; a stream closed early must be ``discard``-ed. ``lane`` is a ``Lane`` or its
        value. Unknown item types are ignored.
        """
        handler = self._dispatch.get(type(item))
        if handler is not None:
            with self._lock:
                handler(item, model_name, _label(lane), tenant)

    def discard(self, request_id: str) -> None:
        """Forget a request whose stream ended without ``Finished``/``Failed`` (client gone)."""
        with self._lock:
            self._timer.discard(request_id)

    def _on_admitted(self, item: Admitted, model: str, lane: str, tenant: str) -> None:
        self._timer.admitted(item.request_id, item.queue_s)
        self.queue_wait.labels(lane).observe(item.queue_s)

    def _on_tokens(self, item: TokenChunk, model: str, lane: str, tenant: str) -> None:
        timing = self._timer.tokens(item.request_id, item.stage, len(item.token_ids))
        if timing.ttft_s is not None:
            self.ttft.labels(model).observe(timing.ttft_s)
        itl = self.itl.labels(model)
        for gap in timing.gaps_s:
            itl.observe(gap)

    def _on_stage(self, item: StageDone, model: str, lane: str, tenant: str) -> None:
        self.stage_ttft.labels(lane).observe(item.ttft_s)
        if item.tpot_s is not None:
            self.stage_tpot.labels(lane).observe(item.tpot_s)
        stage = _stage_label(item.stage)
        self.slo_stages.labels(lane, stage, "met" if item.slo_met else "missed").inc()
        met_total = self._stages.setdefault((lane, stage), [0, 0])
        met_total[0] += int(item.slo_met)
        met_total[1] += 1
        self.slo_ratio.labels(lane, stage).set(met_total[0] / met_total[1])
        ttft_ok = item.ttft_s <= item.ttft_slo_s
        tpot_ok = item.tpot_s is None or item.tpot_s <= item.tpot_slo_s
        self.slo_checks.labels(lane, "ttft", "met" if ttft_ok else "missed").inc()
        self.slo_checks.labels(lane, "tpot", "met" if tpot_ok else "missed").inc()

    def _on_finished(self, item: Finished, model: str, lane: str, tenant: str) -> None:
        end = self._timer.end(item.request_id)
        self.e2e.labels(model).observe(end.e2e_s if end is not None else item.e2e_s)
        if end is not None and end.tpot_s is not None:
            self.tpot.labels(model).observe(end.tpot_s)
        self.success.labels(model, item.finish_reason).inc()
        self.tenant_requests.labels(tenant, "finished").inc()

    def _on_failed(self, item: Failed, model: str, lane: str, tenant: str) -> None:
        self._timer.discard(item.request_id)
        self.tenant_requests.labels(tenant, _label(item.kind)).inc()

    # ── scrape-time feed ────────────────────────────────────────────────────────────────────
    def update_from_stats(self, stats: ClusterStats) -> None:
        """Copy a ``ClusterStats`` snapshot into the cluster series (call before ``render``)."""
        with self._lock:
            self._apply_stats(stats)

    def _apply_stats(self, s: ClusterStats) -> None:
        m, cum, g = self.model_name, self._cum, self._gauges
        self.running.labels(m).set(s.running)
        self.waiting.labels(m).set(s.waiting)
        usage = list(s.kv_usage.values())
        self.kv_usage.labels(m).set(sum(usage) / len(usage) if usage else 0.0)
        cum["prompt"].set(s.prompt_tokens, m)
        cum["generation"].set(s.generation_tokens, m)
        cum["handoff_bytes"].set(s.kv_transfer_bytes)
        cum["handoffs"].set(s.kv_transfers)
        cum["handoff_s"].set(s.kv_transfer_seconds)
        cum["retries"].set(s.retries)
        lanes = {_label(lane): ls for lane, ls in s.lanes.items()}
        for lane, ls in lanes.items():
            for decision in ("admitted", "best_effort", "promoted", "rejected"):
                cum["admission"].set(getattr(ls, decision), lane, decision)
        for action, count in s.fallback_actions.items():
            cum["fallback"].set(count, _label(action))
        roles = {w.worker_id: w.role for w in s.workers}
        for w in s.workers:
            cum["restarts"].set(w.restarts, w.worker_id, w.role)
        g["queued"].replace({(lane, ): ls.queued for lane, ls in lanes.items()})
        current = _label(s.overload_state)
        states = [st.value for st in OverloadState] + [current]
        g["overload"].replace({(st, ): float(st == current) for st in states})
        g["busy"].replace({(w, roles.get(w, "unknown")): f for w, f in s.busy_fraction.items()})
        g["worker_kv"].replace({(w, roles.get(w, "unknown")): f for w, f in s.kv_usage.items()})
        g["tenants"].replace({(t, ): n for t, n in s.tenants_running.items()})
        g["healthy"].replace({(w.worker_id, w.role): float(w.healthy) for w in s.workers})
        self._size_gate.set(s.size_gate_quantile)

    # ── exposition ──────────────────────────────────────────────────────────────────────────
    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and the Content-Type to serve it with."""
        with self._lock:
            return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
