"""GPU decode step time of a Llama-3-8B-shaped model against the memory-bandwidth floor.

    python -m bench.decode_roofline [--batches 1 16 64] [--context 512] [--json OUT]

A decode step must read every weight once and each sequence's KV cache once, so its time is
bounded below by ``(weight bytes + KV bytes read) / memory bandwidth``. The bandwidth is measured
in the same run with a device-to-device copy of a large tensor. The model is random-weight bf16
with Llama-3-8B's shapes (32 layers, hidden 4096, GQA 32/8, MLP 14336, vocab 128256) and runs
through the engine's own forward, paged KV cache and Triton kernels. Target: the floor is at
least 70% of the measured step time at batch 64. Without CUDA it prints a skip line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def llama3_8b_spec(max_len: int):
    from transformers import LlamaConfig

    from engine.model_config import _spec_from_config

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=max_len,
                      rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                          "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 8192})
    return _spec_from_config(Path("llama3-8b-shaped"), "LlamaForCausalLM", cfg)


def measure_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    return 2 * src.numel() * 2 / _time(lambda: dst.copy_(src), 20)


def _time(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def decode_step_time(model, spec, ops, batch: int, context: int, block_size: int = 16) -> tuple[float, int]:
    from engine.model import AttentionMetadata

    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    per_seq = -(-(context + 1) // block_size)
    kv = torch.zeros(spec.num_layers, 2, batch * per_seq, block_size, spec.num_kv_heads, spec.head_dim,
                     dtype=dtype, device=device)
    tables = torch.arange(batch * per_seq, dtype=torch.int32, device=device).view(batch, per_seq)
    slots = (tables[:, context // block_size].long() * block_size + context % block_size)
    meta = AttentionMetadata(slot_mapping=slots, num_decode=batch, decode_block_tables=tables,
                             decode_context_lens=torch.full((batch,), context + 1, dtype=torch.int32, device=device),
                             prefill_block_tables=None, prefill_query_start_loc=None, prefill_context_lens=None)
    ids = torch.randint(0, spec.vocab_size, (batch,), device=device)
    pos = torch.full((batch,), context, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    step = lambda: model(ids, pos, meta, kv, rows, ops)  # noqa: E731
    for _ in range(3):
        step()
    kv_read = batch * (context + 1) * spec.kv_bytes_per_token(kv.element_size())
    return _time(step, 20), kv_read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        return 0
    from engine.model import CausalLM, RotaryEmbedding
    from kernels import select_backend

    device = torch.device("cuda")
    spec = llama3_8b_spec(max(8192, args.context + 1))
    with torch.device("meta"):
        model = CausalLM(spec)
    model = model.to_empty(device=device).to(torch.bfloat16)
    model.rotary = RotaryEmbedding(spec).to(device)  # to_empty left its tables uninitialised
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    ops = select_backend(device)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    bandwidth = measure_bandwidth(device)
    rows = []
    for b in args.batches:
        step_s, kv_bytes = decode_step_time(model, spec, ops, b, args.context)
        floor_s = (weight_bytes + kv_bytes) / bandwidth
        rows.append({"batch": b, "context": args.context, "step_ms": step_s * 1e3, "floor_ms": floor_s * 1e3,
                     "floor_over_step": floor_s / step_s, "kernels": ops.name,
                     "bandwidth_gbs": bandwidth / 1e9, "device": torch.cuda.get_device_name()})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
