"""Turns a ``SchedulerOutput`` into tensors, runs the model once, and samples.

Batch layout follows ``AttentionMetadata``: decode tokens first, then prefill chunks. Logits are
computed only where a sequence has all its tokens computed after this step (every decode, and
the final chunk of a prefill); intermediate prefill chunks only fill the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kv_cache import KVCache
from engine.model import AttentionMetadata, CausalLM
from engine.sampling import sample
from engine.scheduler import SchedulerOutput
from engine.sequence import Sequence


@dataclass(frozen=True)
class PreparedBatch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logit_rows: torch.Tensor          # rows of the batch whose logits are computed
    sampling: tuple[Sequence, ...]    # the sequence each logit row samples for


class ModelRunner:
    def __init__(self, model: CausalLM, kv_cache: KVCache, ops, device: torch.device):
        self.model, self.kv_cache, self.ops, self.device = model, kv_cache, ops, device

    def execute(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> dict[int, int]:
        """Run one step; return {id(seq): sampled token} for sequences that produced one."""
        batch = self.prepare(out, block_tables)
        logits = self.forward(batch)
        if not batch.sampling:
            return {}
        tokens = sample(logits, [s.params for s in batch.sampling], [s.sampler for s in batch.sampling])
        return {id(s): t for s, t in zip(batch.sampling, tokens)}

    def prepare(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> "PreparedBatch":
        for copy in out.copies:
            self.kv_cache.copy_block(copy.src, copy.dst)
        bs = self.kv_cache.block_size
        ids, positions, slots, logit_rows, sampling = [], [], [], [], []
        for chunk in (*out.decodes, *out.prefills):
            seq, start = chunk.seq, chunk.seq.num_computed_tokens
            table = block_tables[seq.request_id]
            end = start + chunk.num_tokens
            slots.extend(table[pos // bs] * bs + pos % bs for pos in range(start, end))
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            if chunk.completes:
                logit_rows.append(len(ids) - 1)
                sampling.append(seq)
        dev = self.device
        return PreparedBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            meta=self._metadata(out, block_tables, slots),
            logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=dev),
            sampling=tuple(sampling))

    def forward(self, batch: "PreparedBatch") -> torch.Tensor:
        """Logits [len(batch.logit_rows), vocab] in float32; writes the batch's KV into the cache."""
        return self.model(batch.input_ids, batch.positions, batch.meta, self.kv_cache.tensor,
                          batch.logit_rows, self.ops)

    def _metadata(self, out: SchedulerOutput, tables: dict[str, list[int]], slots: list[int]) -> AttentionMetadata:
        dev = self.device

        def table_tensor(chunks):
            rows = [tables[c.seq.request_id] for c in chunks]
            width = max(len(r) for r in rows)
            return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32, device=dev)

        def lens(chunks):
            return torch.tensor([c.seq.num_computed_tokens + c.num_tokens for c in chunks],
                                dtype=torch.int32, device=dev)

        d, p = out.decodes, out.prefills
        qsl = None
        if p:
            starts = [0]
            for c in p:
                starts.append(starts[-1] + c.num_tokens)
            qsl = torch.tensor(starts, dtype=torch.int32, device=dev)
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decode=len(d),
            decode_block_tables=table_tensor(d) if d else None,
            decode_context_lens=lens(d) if d else None,
            prefill_block_tables=table_tensor(p) if p else None,
            prefill_query_start_loc=qsl,
            prefill_context_lens=lens(p) if p else None,
        )
