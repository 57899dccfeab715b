"""Generation end to end: greedy output equals transformers' generate; sampling and stops behave."""

import subprocess
import sys

import pytest
import torch

from engine.sampling import SamplingParams
from tests.engine.helpers import make_engine
from tests.tiny_models import reference_model

PROMPTS = [
    "Hello",
    "The quick brown fox",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Service level objectives bound time to first token and time per output token. " * 3,
    "0123456789",
    "How are you today?",
    "Prefill computes the prompt; decode produces one token at a time. The quick brown fox jumps.",
    "Hello world! " * 12,
]


def _hf_greedy(ref, tokenizer, prompt: str, max_new: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("model", ["llama_dir", "qwen2_dir"])
def test_greedy_outputs_are_token_identical_to_transformers_generate(model, request):
    folder = request.getfixturevalue(model)
    engine, ref = make_engine(folder, max_num_batched_tokens=64), reference_model(folder)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = engine.generate(PROMPTS, params, timeout_s=120)
    for prompt, out in zip(PROMPTS, outputs):
        assert list(out.output_token_ids) == _hf_greedy(ref, engine.tokenizer, prompt, 24), prompt
    engine.block_manager.check_invariants()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tandem_generate_greedy_equals_transformers_generate(prompt, llama_dir, capsys):
    from cluster.cli import main

    engine, ref = make_engine(llama_dir), reference_model(llama_dir)
    want_ids = _hf_greedy(ref, engine.tokenizer, prompt, 16)
    assert main(["generate", "--model", str(llama_dir), "--max-tokens", "16", "--temperature", "0",
                 "--device", "cpu", "--kernels", "torch", "--dtype", "float32", prompt]) == 0
    out = capsys.readouterr().out
    assert out == engine.tokenizer.decode(want_ids, skip_special_tokens=True) + "\n"


def test_cli_generate_streams_the_greedy_text(llama_dir):
    engine, ref = make_engine(llama_dir), reference_model(llama_dir)
    want = engine.tokenizer.decode(_hf_greedy(ref, engine.tokenizer, "The quick brown fox", 12),
                                   skip_special_tokens=True)
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "generate", "--model", str(llama_dir),
                           "--max-tokens", "12", "--temperature", "0", "--device", "cpu", "--dtype", "float32",
                           "The quick brown fox"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want + "\n"
    assert "[tandem]" in proc.stderr and "[tandem]" not in proc.stdout


def test_same_seed_gives_same_tokens_whatever_the_batch(llama_dir):
    engine = make_engine(llama_dir)
    seeded = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = engine.generate(["Hello world"], seeded)[0].output_token_ids
    noise = SamplingParams(temperature=1.2, max_tokens=16, ignore_eos=True)
    batched = engine.generate(["Hello world", "The quick", "Paged attention"], seeded)
    assert batched[0].output_token_ids == alone
    engine.add_request("The quick brown", noise)
    mixed = engine.generate(["Hello world"], seeded)[0].output_token_ids
    assert mixed == alone


def test_different_seeds_give_different_samples(llama_dir):
    engine = make_engine(llama_dir)
    outs = [engine.generate(["Hello world"], SamplingParams(temperature=1.5, seed=s, max_tokens=16,
                                                            ignore_eos=True))[0].output_token_ids
            for s in (1, 2)]
    assert outs[0] != outs[1]


def test_top_k_one_is_greedy(llama_dir):
    engine = make_engine(llama_dir)
    greedy = engine.generate(["The quick brown fox"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    topk1 = engine.generate(["The quick brown fox"], SamplingParams(temperature=0.8, top_k=1, seed=7,
                                                                   max_tokens=10, ignore_eos=True))
    assert greedy[0].output_token_ids == topk1[0].output_token_ids


def test_max_tokens_and_stop_token_ids_end_generation(llama_dir):
    engine = make_engine(llama_dir)
    out = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert len(out.output_token_ids) == 5 and out.finish_reason.value == "length"
    stop_at = out.output_token_ids[2]
    stopped = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True,
                                                        stop_token_ids=(stop_at,)))[0]
    first = list(out.output_token_ids).index(stop_at)
    assert stopped.output_token_ids == out.output_token_ids[:first + 1]
    assert stopped.finish_reason.value == "stop"


def test_stop_string_truncates_text_and_stream_matches(llama_dir):
    engine = make_engine(llama_dir)
    full = engine.generate(["The quick brown fox"], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=(stop,))
    pieces = [o.new_text for o in engine.stream("The quick brown fox", params)]
    assert "".join(pieces) == full.text[:full.text.index(stop)]


def test_streamed_text_equals_full_decode(qwen2_dir):
    engine = make_engine(qwen2_dir)
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=30, ignore_eos=True)
    outs = list(engine.stream("Hello world! How are you?", params))
    assert "".join(o.new_text for o in outs) == engine.tokenizer.decode(list(outs[-1].output_token_ids),
                                                                        skip_special_tokens=True)
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])


def test_engine_on_triton_kernels_matches_torch_kernels(llama_dir):
    """The Triton path (interpreter on CPU, compiled on CUDA) gives the same greedy tokens."""
    pytest.importorskip("triton")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    torch_out = make_engine(llama_dir, kernels="torch").generate(prompts, params)
    triton_out = make_engine(llama_dir, kernels="triton", max_num_batched_tokens=16).generate(prompts, params)
    assert [o.output_token_ids for o in triton_out] == [o.output_token_ids for o in torch_out]
