"""Benchmark workloads: request lengths drawn from ShareGPT, prompts as random token ids.

Lengths come from the ShareGPT length trace (``../shared/traces`` when present, else the excerpt
shipped in ``bench/data``). They are scaled by ``context / 8192`` (the trace was filtered to 8k
tokens) so the same distribution fits a smaller context budget, then clipped so that prompt +
output fits. Prompts are random token ids from the middle of the vocabulary, identical for every
system in one run (same seed), so every engine sees exactly the same tokens.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
SHAREGPT_SHARED = _ROOT.parent / "shared" / "traces" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
SHAREGPT_BUNDLED = _ROOT / "bench" / "data" / "sharegpt_lengths_head256.csv"
TRACE_CONTEXT = 8192


@dataclass(frozen=True)
class BenchRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int


def sharegpt_lengths(path: Path | None = None) -> list[tuple[int, int]]:
    path = path or (SHAREGPT_SHARED if SHAREGPT_SHARED.exists() else SHAREGPT_BUNDLED)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no requests")
    return [(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in rows]


def sharegpt_workload(n: int, context: int, vocab_size: int, seed: int = 0,
                      path: Path | None = None) -> list[BenchRequest]:
    """n requests whose (prompt, output) lengths follow ShareGPT scaled to ``context`` tokens."""
    rng = random.Random(seed)
    lengths = sharegpt_lengths(path)
    scale = context / TRACE_CONTEXT
    lo, hi = min(100, vocab_size // 4), max(vocab_size - 100, vocab_size * 3 // 4)
    out = []
    for _ in range(n):
        prompt, output = rng.choice(lengths)
        p = max(4, round(prompt * scale))
        o = max(1, round(output * scale))
        p = min(p, context - 2)
        o = min(o, context - p - 1)
        out.append(BenchRequest(tuple(rng.randrange(lo, hi) for _ in range(p)), o))
    return out
