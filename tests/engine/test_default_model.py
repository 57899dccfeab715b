"""The embedded default model (SmolLM2-135M-Instruct) answers in real words, like transformers."""

import pytest
import torch

from engine.config import EngineConfig
from engine.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    from engine.default_model import ensure_default_model

    return ensure_default_model(log=lambda *_: None)


def test_default_model_answers_and_matches_transformers_greedy(default_model):
    from transformers import AutoModelForCausalLM

    from engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(default_model), device="cpu", dtype="float32",
                                    kv_cache_memory_gb=0.25))
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                  tokenize=True, add_generation_prompt=True, return_dict=False)
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=16))[0]
    assert "Paris" in out.text

    ref = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    got = list(out.output_token_ids)
    assert got == want[:len(got)]
