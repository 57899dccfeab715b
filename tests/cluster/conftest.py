"""Prompts, sampling params and the single-process reference shared by the worker tests."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.tiny_models import VOCAB

LENGTHS = [1, 3, 7, 15, 16, 17, 31, 32, 33, 48, 64, 65, 90, 127, 128, 150]
PARAMS = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}


def make_prompts() -> list[list[int]]:
    rng = random.Random(0)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in LENGTHS]
    prompts[-3] = prompts[-4][:64] + prompts[-3][64:]      # shares 4 full blocks: a prefix-cache hit
    return prompts


@pytest.fixture(scope="session")
def engine_config(llama_dir):
    from engine.config import EngineConfig

    return EngineConfig(model=str(llama_dir), device="cpu", dtype="float32", kernels="torch", num_blocks=256)


@pytest.fixture(scope="session")
def engine(engine_config):
    """The single-process engine the cluster's outputs are compared with."""
    from engine.engine import LLMEngine

    return LLMEngine(engine_config)


def generate(engine, prompts: list[list[int]], params: dict = PARAMS) -> list[tuple[int, ...]]:
    """The engine's output token ids for ``prompts`` under ``params``."""
    from prefill_worker.messages import sampling_params_from_dict

    outs = engine.generate(prompts, sampling_params_from_dict(params), timeout_s=60)
    return [tuple(o.output_token_ids) for o in outs]


@pytest.fixture(scope="session")
def reference(engine) -> list[tuple[int, ...]]:
    """Greedy outputs of the single-process engine for ``make_prompts()``."""
    return generate(engine, make_prompts())


def assert_no_kv_left(handle, within_s: float = 15.0) -> None:
    """Within ``within_s``: every worker passes its block-manager invariants and references no KV
    (prefill workers sweep their expired offers first), and the controller tracks nothing."""
    import ray

    until, usage = time.monotonic() + within_s, {}
    while True:
        for name, worker in handle.workers.items():
            if name.startswith("p"):
                ray.get(worker.sweep.remote(), timeout=30)
            ray.get(worker.check_invariants.remote(), timeout=30)
            usage[name] = ray.get(worker.stats.remote(), timeout=30).kv_usage
        if all(u == 0 for u in usage.values()) or time.monotonic() > until:
            break
        time.sleep(0.25)
    assert all(u == 0 for u in usage.values()), usage
    stats = asyncio.run(asyncio.wait_for(handle.stats(), 60))
    assert stats.running == 0 and stats.waiting == 0, stats
