"""From a client's ``GenerateRequest`` to the scheduler's ``Request``: validation and SLOs.

Every check raises ``ValueError`` with a message fit for a 400 / INVALID_ARGUMENT. SLOs, per
stage: the request's absolute ``ttft_s``/``tpot_s`` where given (a stage's own values first),
else its scenario preset (or the cluster's), TTFT relative to the modelled prefill time and
floored at ``min_ttft_s``, TPOT times ``slo_scale``.
"""

from __future__ import annotations

import math

from cluster.api import GenerateRequest
from cluster.config import ClusterConfig
from prefill_worker.messages import sampling_params_from_dict
from router.perf_model import PerfModel
from router.request import SLO, Request, Stage
from router.slo import Scenario, preset


def _check_ids(ids, vocab: int, what: str) -> None:
    if not ids:
        raise ValueError(f"{what} is empty")
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise ValueError(f"{what} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")


def _positive(value, name: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def build_request(req: GenerateRequest, now_s: float, config: ClusterConfig, perf: PerfModel,
                  max_model_len: int, vocab: int) -> Request:
    if not req.request_id:
        raise ValueError("request_id is empty")
    _check_ids(req.prompt_token_ids, vocab, "the prompt")
    params = sampling_params_from_dict(req.params)
    for name in ("ttft_s", "tpot_s"):
        _positive(getattr(req, name), name)
    if not 0 <= req.tool_risk <= 1:
        raise ValueError(f"tool_risk must be in [0, 1], got {req.tool_risk}")
    scenario = req.scenario or config.scenario
    try:
        scenario = Scenario(scenario)
    except ValueError:
        raise ValueError(f"unknown scenario {scenario!r}; known: {[s.value for s in Scenario]}") from None
    p = preset(Scenario.CHATBOT if scenario is Scenario.MIXED else scenario)
    inputs = [len(req.prompt_token_ids)] + [len(s.append_token_ids) for s in req.stages]
    outputs = [params.max_tokens] + [s.max_tokens for s in req.stages]
    for i, s in enumerate(req.stages, 1):
        _check_ids(s.append_token_ids, vocab, f"stage {i}'s appended tokens")
        if not isinstance(s.max_tokens, int) or s.max_tokens < 1:
            raise ValueError(f"stage {i}: max_tokens must be an integer >= 1, got {s.max_tokens!r}")
        if not s.tool_delay_s >= 0:
            raise ValueError(f"stage {i}: tool_delay_s must be >= 0, got {s.tool_delay_s!r}")
        _positive(s.ttft_s, f"stage {i} ttft_s")
        _positive(s.tpot_s, f"stage {i} tpot_s")
    total = sum(inputs) + sum(outputs)
    if total > max_model_len:
        raise ValueError(f"the request needs up to {total} tokens ({sum(inputs)} input + {sum(outputs)} "
                         f"max output); the context window is {max_model_len}")
    stages = []
    for i, (n_in, n_out) in enumerate(zip(inputs, outputs)):
        spec = p.for_stage(i, len(inputs))
        own = req.stages[i - 1] if i else None
        ttft = (own.ttft_s if own and own.ttft_s else None) or req.ttft_s
        tpot = (own.tpot_s if own and own.tpot_s else None) or req.tpot_s
        if ttft is None:
            ttft = spec.resolve(n_in, perf.prefill_time, config.min_ttft_s).ttft_s
        if tpot is None:
            tpot = spec.tpot_s * config.slo_scale
        delay = own.tool_delay_s if own else 0.0
        stages.append(Stage(max(n_in, 1) if i else n_in, n_out, SLO(ttft, tpot), tool_delay_s=delay))
    return Request(req.request_id, req.tenant, req.lane, now_s, tuple(stages), req.tool_risk)
