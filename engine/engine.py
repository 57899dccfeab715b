"""LLMEngine: add requests, ``step()`` them through the model, stream their outputs.

    step():  plan = scheduler.schedule()          # which tokens run (pure Python)
             sampled = runner.execute(plan)       # one forward over the mixed batch
             scheduler.postprocess(plan, sampled) # advance, commit blocks
             return self._outputs(plan)           # stop checks, detokenize, free finished

Requests can be added and aborted between steps. ``export_kv``/``import_kv`` move a sequence's
KV blocks out of one engine and into another (the prefill → decode handoff).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.kv_cache import KVCache, KVHandoff
from engine.loader import load_model
from engine.model_config import load_model_spec
from engine.model_runner import ModelRunner
from engine.sampling import SamplerState, SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.sequence import FinishReason, Sequence, SeqStatus
from kernels import select_backend
from router.perf_model import BatchShape, attention_pairs


class RequestError(ValueError):
    """A request the engine refuses (bad prompt, duplicate id, ...); the message says why."""


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    new_token_ids: tuple[int, ...]
    new_text: str
    finished: bool
    finish_reason: FinishReason | None
    output_token_ids: tuple[int, ...]
    text: str
    num_prompt_tokens: int
    num_cached_tokens: int


@dataclass(frozen=True)
class StepRecord:
    """What one step ran and how long it took: the data the performance model is fitted on."""

    shape: BatchShape
    seconds: float


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int
    num_running: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = _pick_device(config.device)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.dtype = _pick_dtype(config.dtype, self.device)
        self.spec = load_model_spec(config.model)
        self.max_model_len = min(self.spec.max_model_len, config.max_model_len or self.spec.max_model_len)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.spec.path))
        self.ops = select_backend(self.device, config.kernels)
        self.model = load_model(self.spec, self.dtype, self.device)
        num_blocks = config.num_blocks or self._blocks_for_memory()
        self.kv_cache = KVCache(self.spec.num_layers, num_blocks, config.block_size, self.spec.num_kv_heads,
                                self.spec.head_dim, self.dtype, self.device, self.ops)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_batched_tokens, config.max_num_seqs)
        self.runner = ModelRunner(self.model, self.kv_cache, self.ops, self.device)
        self._seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.last_step: StepRecord | None = None
        eos = set(self.spec.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self._eos = frozenset(eos)

    # ----------------------------------------------------------------- requests
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return list(prompt)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._seqs:
            raise RequestError(f"request id {request_id!r} is already in use")
        ids = self.tokenize(prompt)
        self._check_prompt(ids)
        seq = self._new_sequence(request_id, ids, params)
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise RequestError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; the context window is {self.max_model_len} "
                               f"(at least one token must be left to generate)")
        bad = [t for t in ids if not 0 <= t < self.spec.vocab_size]
        if bad:
            raise RequestError(f"token ids outside the vocabulary [0, {self.spec.vocab_size}): {bad[:5]}")
        if len(ids) + 1 > self.kv_cache.num_blocks * self.kv_cache.block_size:
            raise RequestError(f"the prompt needs more KV blocks than the cache has "
                               f"({self.kv_cache.num_blocks} blocks of {self.kv_cache.block_size})")

    def _new_sequence(self, request_id: str, ids: list[int], params: SamplingParams) -> Sequence:
        detok = IncrementalDetokenizer(self.tokenizer, ids)
        return Sequence(request_id, ids, params, time.monotonic(),
                        SamplerState.for_params(params, self.device), detok)

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks. Returns False if it was unknown or already done."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        seq.status, seq.finish_reason = SeqStatus.FINISHED, FinishReason.ABORT
        return True

    def has_request(self, request_id: str) -> bool:
        """Whether the request is live here (waiting, running or parked)."""
        return request_id in self._seqs

    def park(self, request_id: str) -> None:
        """Stop stepping a running request but keep its KV blocks (a prefill worker holds them
        until the decode side confirms the handoff). ``abort`` frees it later."""
        seq = self._seqs.get(request_id)
        if seq is None or seq not in self.scheduler.running:
            raise RequestError(f"request {request_id!r} is not running here")
        self.scheduler.running.remove(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ----------------------------------------------------------------- stepping
    def step(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        if plan.empty:
            return []
        tables = {c.seq.request_id: self.block_manager.block_table(c.seq.request_id)
                  for c in (*plan.decodes, *plan.prefills)}
        shape = _batch_shape(plan)
        start = time.perf_counter()
        sampled = self.runner.execute(plan, tables)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_step = StepRecord(shape, time.perf_counter() - start)
        self.scheduler.postprocess(plan, sampled)
        return self._outputs(plan, sampled)

    def _outputs(self, plan: SchedulerOutput, sampled: dict[int, int]) -> list[RequestOutput]:
        outputs = []
        for chunk in (*plan.decodes, *plan.prefills):
            seq = chunk.seq
            token = sampled.get(id(seq))
            if token is None or seq.status is not SeqStatus.RUNNING:
                continue
            if seq.detokenizer is not None:
                seq.detokenizer.add(token)
            self._check_stop(seq, token)
            new_text = self._release_text(seq)
            if seq.finished:
                self.scheduler.remove(seq)
                self._seqs.pop(seq.request_id, None)
            outputs.append(RequestOutput(
                seq.request_id, (token,), new_text, seq.finished, seq.finish_reason, tuple(seq.output_ids),
                seq.detokenizer.text if seq.detokenizer else "", seq.num_prompt_tokens, seq.num_cached_tokens))
        return outputs

    def _check_stop(self, seq: Sequence, token: int) -> None:
        """Finish the sequence on EOS, a stop token, a stop string (text cut there) or its length limit."""
        p, reason, cut_at_stop_string = seq.params, None, False
        if (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids:
            reason = FinishReason.STOP
        elif p.stop and seq.detokenizer is not None:
            text = seq.detokenizer.text
            start = max(0, seq.stop_scan_from - max(map(len, p.stop)) + 1)
            hits = sorted((i, s) for s in p.stop if (i := text.find(s, start)) >= 0)
            seq.stop_scan_from = len(text)
            if hits:
                i, s = hits[0]
                seq.detokenizer.text = text[: i + len(s) if p.include_stop_str_in_output else i]
                reason, cut_at_stop_string = FinishReason.STOP, True
        if reason is None and (len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len):
            reason = FinishReason.LENGTH
        if reason is not None:
            seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
            if seq.detokenizer is not None and not cut_at_stop_string:
                seq.detokenizer.flush()

    @staticmethod
    def _release_text(seq: Sequence) -> str:
        """Text to stream now. With stop strings, the last (longest stop - 1) characters are held
        back until they can no longer begin a stop string, so no stop text is ever streamed."""
        if seq.detokenizer is None:
            return ""
        text = seq.detokenizer.text
        end = len(text)
        if seq.params.stop and not seq.finished:
            end = max(seq.emitted_chars, end - max(map(len, seq.params.stop)) + 1)
        new_text, seq.emitted_chars = text[seq.emitted_chars:end], end
        return new_text

    # ----------------------------------------------------------------- helpers
    def generate(self, prompts: Iterable[str | list[int]], params: SamplingParams | None = None,
                 timeout_s: float | None = None) -> list[RequestOutput]:
        """Run prompts to completion with continuous batching; outputs in prompt order."""
        ids = [self.add_request(p, params) for p in prompts]
        final: dict[str, RequestOutput] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(final) < len(ids):
            if deadline is not None and time.monotonic() > deadline:
                for rid in ids:
                    self.abort(rid)
                raise TimeoutError(f"generate did not finish within {timeout_s} s")
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r] for r in ids]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield one RequestOutput per generated token of a single request (others may share steps)."""
        rid = self.add_request(prompt, params)
        try:
            while True:
                for out in self.step():
                    if out.request_id == rid:
                        yield out
                        if out.finished:
                            return
        finally:
            self.abort(rid)

    def stats(self) -> EngineStats:
        s = self.block_manager.stats
        return EngineStats(len(self.scheduler.waiting), len(self.scheduler.running), self.block_manager.usage(),
                           s.queries, s.hits, self.scheduler.num_preemptions)

    # ----------------------------------------------------------------- KV handoff
    def export_kv(self, request_id: str) -> KVHandoff:
        """Copy out the KV of every computed token of a running request (the prefill → decode handoff)."""
        seq = self._seqs.get(request_id)
        if seq is None or seq.num_computed_tokens == 0:
            raise RequestError(f"request {request_id!r} has no computed KV to export")
        n = seq.num_computed_tokens
        table = self.block_manager.block_table(request_id)[: -(-n // self.kv_cache.block_size)]
        return self.kv_cache.export_blocks(request_id, table, seq.token_ids[:n])

    def import_kv(self, handoff: KVHandoff, token_ids: list[int], num_prompt_tokens: int,
                  params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Start a request whose first ``handoff.meta.num_tokens`` tokens already have KV.

        ``token_ids`` is the prompt plus any tokens the sender already generated (usually the
        first one); decoding continues from there. Raises ``RequestError`` when the cache is full.
        """
        params = params or SamplingParams()
        request_id = request_id or handoff.meta.request_id
        n = handoff.meta.num_tokens
        if list(handoff.meta.token_ids) != list(token_ids[:n]) or len(token_ids) <= n:
            raise RequestError("token_ids must extend the tokens whose KV the handoff carries")
        if request_id in self._seqs:
            raise RequestError(f"request id {request_id!r} is already in use")
        self._check_prompt(token_ids[:num_prompt_tokens])
        alloc = self.block_manager.allocate_slots(request_id, len(token_ids))
        if alloc is None:
            raise RequestError(f"no room in the KV cache for {len(token_ids)} tokens of {request_id!r}")
        table = self.block_manager.block_table(request_id)
        self.kv_cache.import_blocks(handoff, table[: len(handoff.meta.block_ids)])
        self.block_manager.commit(request_id, token_ids, n)
        seq = self._new_sequence(request_id, list(token_ids[:num_prompt_tokens]), params)
        seq.token_ids = list(token_ids)
        for t in token_ids[num_prompt_tokens:]:
            seq.detokenizer.add(t)
        # The sender streamed the text of the tokens it generated: release only what follows,
        # holding back what it held back (the tail that may still begin a stop string).
        text_len = len(seq.detokenizer.text)
        seq.emitted_chars = (max(0, text_len - max(map(len, params.stop)) + 1) if params.stop else text_len)
        seq.num_computed_tokens, seq.prefix_matched, seq.status = n, True, SeqStatus.RUNNING
        self._seqs[request_id] = seq
        self.scheduler.running.append(seq)
        return request_id

    def _blocks_for_memory(self) -> int:
        per_block = self.spec.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8) * self.config.block_size
        if self.config.kv_cache_memory_gb is not None:
            budget = self.config.kv_cache_memory_gb * 2**30
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1 - self.config.gpu_memory_utilization) * total
        else:
            budget = 2**30
        blocks = int(budget // per_block)
        if blocks < 1:
            raise RuntimeError("no memory left for the KV cache")
        return blocks


def _batch_shape(plan: SchedulerOutput) -> BatchShape:
    """The performance model's features of a planned step (before it advances the sequences)."""
    return BatchShape(
        prefill_tokens=sum(c.num_tokens for c in plan.prefills),
        decode_tokens=len(plan.decodes),
        decode_context=sum(c.seq.num_computed_tokens + 1 for c in plan.decodes),
        prefill_pairs=sum(attention_pairs(c.num_tokens, c.seq.num_computed_tokens) for c in plan.prefills),
        num_seqs=len(plan.decodes) + len(plan.prefills))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(name)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA and on CPUs with AMX bf16 tiles (their bf16 GEMMs measured ~7x
    faster than float32 here); float32 on other CPUs, where bf16 is emulated and slower."""
    if name == "auto":
        if device.type == "cuda" or torch.cpu._is_amx_tile_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)
