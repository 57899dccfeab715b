"""The demo's workload: a short, time-scaled slice of the Azure 2023 conversation trace with
mixed lanes, as ``GenerateRequest``s with arrival offsets.

    trace rows (arrival, prompt tokens, output tokens)  ── replay(rate) / cut at duration
        ── lengths scaled to the CPU budget (prompt × token_scale, ≤ max_prompt; output ≤ max_output)
        ── lane by a seeded draw: interactive (chatbot SLOs), heavy (tool calling, two stages),
           background (summarization SLOs, loose)
        ── random prompt token ids (seeded), since the trace has lengths only

The trace excerpt shipped in ``cluster/data`` is the first 300 rows of
``AzureLLMInferenceTrace_conv.csv`` (Azure/AzurePublicDataset, CC-BY-4.0; Patel et al.,
"Splitwise", ISCA 2024); ``../shared/traces`` holds the full file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.api import GenerateRequest, StageSpec
from router.request import Lane
from sim.trace import load_rows, replay

EXCERPT = Path(__file__).resolve().parent / "data" / "azure_conv_head300.csv"
LANES = ((Lane.INTERACTIVE, "chatbot", 0.6), (Lane.HEAVY, "tool_calling", 0.25), (Lane.BACKGROUND, "summarization", 0.15))


@dataclass(frozen=True)
class Planned:
    at_s: float                      # offset from the start of the run
    request: GenerateRequest


@dataclass(frozen=True)
class WorkloadSpec:
    duration_s: float = 60.0
    rate: float = 1.0                # requests per second after time scaling
    token_scale: float = 0.5
    max_prompt: int = 768
    max_output: int = 48
    vocab: int = 49152
    seed: int = 0
    trace: str | None = None         # None: the shipped excerpt


def build(spec: WorkloadSpec) -> list[Planned]:
    """The planned requests, in arrival order (deterministic for a spec)."""
    if spec.duration_s <= 0 or spec.rate <= 0:
        raise ValueError(f"duration and rate must be positive, got {spec.duration_s}, {spec.rate}")
    rows = replay(load_rows(spec.trace or EXCERPT, "azure"), rate=spec.rate, duration_s=spec.duration_s)
    rng = np.random.default_rng(spec.seed)
    weights = np.array([w for _, _, w in LANES])
    out = []
    for i, (t, n_in, n_out) in enumerate(zip(rows.arrival_s, rows.input_tokens, rows.output_tokens)):
        lane, scenario, _ = LANES[int(rng.choice(len(LANES), p=weights / weights.sum()))]
        prompt = int(min(spec.max_prompt, max(4, round(n_in * spec.token_scale))))
        max_tokens = int(min(spec.max_output, max(2, n_out)))
        ids = tuple(int(x) for x in rng.integers(3, spec.vocab, size=prompt))
        params = {"temperature": 0.7, "top_p": 0.95, "seed": int(rng.integers(1 << 30)), "max_tokens": max_tokens,
                  "ignore_eos": True}
        stages = ()
        if lane is Lane.HEAVY:                   # a tool call: the result comes back as a second stage
            tool = tuple(int(x) for x in rng.integers(3, spec.vocab, size=int(rng.integers(8, 32))))
            stages = (StageSpec(tool, max_tokens=max(2, max_tokens // 2), tool_delay_s=0.2),)
        out.append(Planned(float(t), GenerateRequest(f"demo-{i}", ids, params, lane=lane, scenario=scenario,
                                                     stages=stages, tenant=f"tenant-{i % 3}")))
    return out
