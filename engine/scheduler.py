"""The engine's step scheduler: continuous batching with chunked prefill under a token budget.

Each ``schedule()`` builds one mixed batch (pure Python, no torch)::

    budget = max_num_batched_tokens
    1. every running decode sequence gets 1 token           (oldest first)
       - out of KV blocks? preempt the newest running sequence (free its blocks, recompute later)
    2. running sequences still prefilling get their next chunk (oldest first)
    3. waiting sequences start, oldest first, while budget, seats and KV blocks last
       - the prefix cache may cover the start of their prompt

The result is a ``SchedulerOutput`` naming only what runs this step; the engine executes it and
calls ``postprocess`` with the tokens sampled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockCopy, BlockManager
from engine.sequence import Sequence, SeqStatus


@dataclass(frozen=True)
class ScheduledChunk:
    """Run tokens [seq.num_computed_tokens, seq.num_computed_tokens + num_tokens) of seq."""

    seq: Sequence
    num_tokens: int

    @property
    def completes(self) -> bool:
        """After this chunk every token has KV, so the last position's logits pick the next token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    decodes: tuple[ScheduledChunk, ...]
    prefills: tuple[ScheduledChunk, ...]
    preempted: tuple[Sequence, ...] = ()
    copies: tuple[BlockCopy, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(c.num_tokens for c in self.prefills)

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills


@dataclass
class Scheduler:
    block_manager: BlockManager
    max_num_batched_tokens: int
    max_num_seqs: int
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    num_preemptions: int = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and free its blocks (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self.block_manager.has_seq(seq.request_id):
            self.block_manager.free(seq.request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        decodes, prefills, preempted, copies = [], [], [], []
        bm = self.block_manager
        # 1 + 2: running sequences, oldest first; decodes before prefill chunks.
        queue = sorted(self.running, key=lambda s: (not s.is_decoding, s.arrival))
        scheduled: set[int] = set()
        while queue and budget > 0:
            seq = queue.pop(0)
            n = min(seq.num_uncomputed, budget)
            alloc = bm.allocate_slots(seq.request_id, seq.num_computed_tokens + n)
            while alloc is None:
                victim = self._pick_victim(exclude=scheduled)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
                queue = [s for s in queue if s is not victim]
                alloc = bm.allocate_slots(seq.request_id, seq.num_computed_tokens + n)
            if alloc is None:
                continue
            copies.extend(alloc.copies)
            scheduled.add(id(seq))
            (decodes if seq.is_decoding else prefills).append(ScheduledChunk(seq, n))
            budget -= n
        # 3: waiting sequences, oldest first. Preempted ones went back to the front.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if not seq.prefix_matched:
                seq.num_computed_tokens = bm.match_prefix(seq.request_id, seq.token_ids)
                seq.num_cached_tokens = seq.num_computed_tokens if seq.num_preemptions == 0 else seq.num_cached_tokens
                seq.prefix_matched = True
            n = min(seq.num_uncomputed, budget)
            alloc = bm.allocate_slots(seq.request_id, seq.num_computed_tokens + n)
            if alloc is None:  # no room: give back the prefix references and wait
                bm.free(seq.request_id)
                seq.num_computed_tokens, seq.prefix_matched = 0, False
                break
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            copies.extend(alloc.copies)
            prefills.append(ScheduledChunk(seq, n))
            budget -= n
        return SchedulerOutput(tuple(decodes), tuple(prefills), tuple(preempted), tuple(copies))

    def _pick_victim(self, exclude: set[int]) -> Sequence:
        candidates = [s for s in self.running if id(s) not in exclude] or self.running
        return max(candidates, key=lambda s: s.arrival)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the KV, keep the tokens, requeue at the front."""
        self.running.remove(seq)
        self.block_manager.free(seq.request_id)
        seq.num_computed_tokens, seq.prefix_matched = 0, False
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, output: SchedulerOutput, sampled: dict[int, int]) -> None:
        """Advance computed counts, append sampled tokens (keyed by id(seq)), commit full blocks."""
        for chunk in (*output.decodes, *output.prefills):
            seq = chunk.seq
            if seq.status is not SeqStatus.RUNNING:
                continue
            seq.num_computed_tokens += chunk.num_tokens
            self.block_manager.commit(seq.request_id, seq.token_ids, seq.num_computed_tokens)
            token = sampled.get(id(seq))
            if token is not None:
                seq.token_ids.append(token)
