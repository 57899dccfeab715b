"""Tiny random-weight checkpoints, built locally with transformers (no hub needed).

Each builder writes a complete Hugging Face folder: config.json, model.safetensors and a
byte-level BPE tokenizer trained here on a few sentences, so any text tokenizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Prefill computes the prompt; decode produces one token at a time.",
    "Service level objectives bound time to first token and time per output token.",
    "Hello world! How are you today? 0123456789",
] * 20
VOCAB = 384


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return fast


def build_llama(folder: Path, *, num_kv_heads: int = 2, rope_parameters: dict | None = None, seed: int = 0,
                max_position_embeddings: int = 512) -> Path:
    """Llama with GQA (4 query heads over 2 kv heads), untied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=num_kv_heads,
                      max_position_embeddings=max_position_embeddings, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, rms_norm_eps=1e-5,
                      **({"rope_parameters": rope_parameters} if rope_parameters else {}))
    return _save(LlamaForCausalLM, cfg, folder, seed)


def build_qwen2(folder: Path, seed: int = 0) -> Path:
    """Qwen2: q/k/v biases and tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, rms_norm_eps=1e-6)
    return _save(Qwen2ForCausalLM, cfg, folder, seed)


def build_mistral(folder: Path, seed: int = 0) -> Path:
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                        sliding_window=256, bos_token_id=1, eos_token_id=2)
    return _save(MistralForCausalLM, cfg, folder, seed)


def _save(cls, cfg, folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32)
    with torch.no_grad():  # random biases (zero by default) so the bias path is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    build_tokenizer(folder)
    return folder


def reference_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
