"""Prompts, sampling params and the single-process reference shared by the worker tests."""

from __future__ import annotations

import random

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
