"""The ``calibrate`` step: time real batches on a live engine and fit the performance model.

The SLO scheduler (``router/``) plans with a batch-time model fitted by least squares. For
planning it is fitted on published operator profiles; for serving it must describe the engine
it schedules. ``calibrate`` drives the engine with a random mix of requests (prompt lengths,
output lengths and arrivals vary, so steps range from pure prefill through mixed batches to
pure decode at many batch sizes and contexts), records every step's ``BatchShape`` and measured
seconds, and fits ``router.perf_model`` on them, reporting fit quality on held-out steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.engine import LLMEngine
from engine.sampling import SamplingParams
from router.perf_model import Calibrator, FitReport, PerfModel


@dataclass(frozen=True)
class CalibrationResult:
    model: PerfModel
    report: FitReport
    steps: int


def calibrate(engine: LLMEngine, steps: int = 160, max_prompt: int = 512, max_output: int = 64,
              max_concurrency: int = 32, seed: int = 0, warmup_steps: int = 4) -> CalibrationResult:
    """Run ``steps`` timed steps of a random workload and fit the batch-time model on them."""
    if steps < 32:
        raise ValueError("calibration needs at least 32 timed steps")
    rng = random.Random(seed)
    vocab = engine.spec.vocab_size
    max_prompt = max(2, min(max_prompt, engine.max_model_len - max_output - 1))
    calibrator, submitted, timed = Calibrator(min_points=32), [], 0
    for i in range(steps + warmup_steps):
        running = len(engine.scheduler.running) + len(engine.scheduler.waiting)
        # Bursty arrivals: sometimes several at once, sometimes none, so batch mixes vary.
        for _ in range(rng.choice((0, 0, 1, 1, 2, 4)) if running < max_concurrency else 0):
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(1, max_prompt))]
            params = SamplingParams(temperature=0, max_tokens=rng.randint(1, max_output), ignore_eos=True)
            submitted.append(engine.add_request(prompt, params))
        if not engine.has_unfinished():
            continue
        engine.step()
        if i >= warmup_steps and engine.last_step is not None:
            calibrator.observe(engine.last_step.shape, engine.last_step.seconds)
            timed += 1
    for rid in submitted:
        engine.abort(rid)
    model, report = calibrator.refit(seed=seed)
    return CalibrationResult(model, report, timed)
