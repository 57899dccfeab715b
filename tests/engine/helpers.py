"""Helpers for engine tests: build an engine on a tiny checkpoint and read its logits."""

from __future__ import annotations

import torch

from engine.config import EngineConfig
from engine.engine import LLMEngine


def make_engine(model_dir, **overrides) -> LLMEngine:
    cfg = dict(model=str(model_dir), device="cpu", dtype="float32", num_blocks=256, block_size=16,
               kernels="torch")
    cfg.update(overrides)
    return LLMEngine(EngineConfig(**cfg))


def step_with_logits(engine: LLMEngine) -> dict[str, torch.Tensor]:
    """One engine step that also returns {request_id: last-position logits} for sampled sequences."""
    plan = engine.scheduler.schedule()
    tables = {c.seq.request_id: engine.block_manager.block_table(c.seq.request_id)
              for c in (*plan.decodes, *plan.prefills)}
    batch = engine.runner.prepare(plan, tables)
    logits = engine.runner.forward(batch)
    from engine.sampling import sample

    tokens = sample(logits, [s.params for s in batch.sampling], [s.sampler for s in batch.sampling])
    sampled = {id(s): t for s, t in zip(batch.sampling, tokens)}
    engine.scheduler.postprocess(plan, sampled)
    engine._outputs(plan, sampled)
    engine.block_manager.check_invariants()
    return {s.request_id: row for s, row in zip(batch.sampling, logits)}
