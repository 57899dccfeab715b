"""Paged-KV block manager with reference counting and prefix caching (pure Python: no torch, no ray).

Every KV block is in exactly one of three states:

    free    ref 0, no hash          deque, allocated first
    used    ref > 0                held by one or more sequence tables
    cached  ref 0, hash registered OrderedDict in least-recently-freed order; reusable by
                                   `match_prefix`, evicted (hash dropped) when free runs out

A block's hash chains over the whole prefix: h_i = sha256(h_{i-1} || tokens of block i), so a hit on
block i means blocks 0..i hold KV computed for exactly the same prefix. Only full, committed blocks are
hashed. The manager owns block ids and refcounts, never the KV tensors: the caller writes KV into the
blocks it was given and applies every `BlockCopy` before writing. The caller frees each sequence it
registered exactly once (`free`); blocks return to `free`/`cached` when their last reference goes.

Every operation costs O(blocks touched); only `check_invariants` walks all blocks.
"""
from __future__ import annotations

import hashlib
import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

BlockHash = bytes
_ROOT_HASH: BlockHash = b""  # parent of the first block; distinct from every 32-byte digest


def chain_hash(parent: BlockHash, tokens: tuple[int, ...]) -> BlockHash:
    """Hash of (parent_hash, tokens); deterministic across processes and machines."""
    return hashlib.sha256(parent + struct.pack(f"<{len(tokens)}q", *tokens)).digest()


@dataclass(frozen=True)
class BlockCopy:
    """Copy-on-write instruction: copy the KV of block `src` into block `dst` before writing."""

    src: int
    dst: int


@dataclass(frozen=True)
class Allocation:
    """Result of `allocate_slots`.

    new_blocks: ids appended to the end of the sequence's table, in order.
    copies: copy-on-write the caller must apply before writing KV; for each copy the table entry that
        held `src` now holds `dst` (the sequence's last block before this call). `block_table` is the
        source of truth.
    """

    new_blocks: tuple[int, ...] = ()
    copies: tuple[BlockCopy, ...] = ()


@dataclass
class PrefixCacheStats:
    queries: int = 0  # tokens looked up by match_prefix
    hits: int = 0  # tokens served from the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._ref = [0] * num_blocks
        self._hash: list[BlockHash | None] = [None] * num_blocks
        self._tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._used: set[int] = set()
        self._cached: OrderedDict[int, None] = OrderedDict()  # oldest-freed first
        self._hash_to_block: dict[BlockHash, int] = {}
        self._tables: dict[Hashable, list[int]] = {}
        self._num_tokens: dict[Hashable, int] = {}  # tokens each table is meant to hold
        self._num_hashed: dict[Hashable, int] = {}  # leading blocks of the table already hashed

    # ---- queries -------------------------------------------------------------------------------
    def num_free_blocks(self) -> int:
        """Blocks allocatable now: truly free plus evictable cached blocks."""
        return len(self._free) + len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks referenced by some sequence (cached blocks count as unused)."""
        return len(self._used) / self.num_blocks

    def has_seq(self, seq_id: Hashable) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: Hashable) -> list[int]:
        """A copy of the sequence's block table (KeyError if the sequence is not registered)."""
        return list(self._table(seq_id))

    # ---- prefix caching ------------------------------------------------------------------------
    def match_prefix(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """Register a new sequence and reuse the longest cached prefix of `token_ids`.

        Returns the number of tokens covered (a multiple of block_size; 0 on a miss or when prefix
        caching is off). A hit guarantees that those leading blocks hold KV computed for exactly
        `token_ids[:n]`; the sequence holds a reference on each until `free`. The last token is never
        covered, so the caller always computes at least one token and gets logits. Follow with
        `allocate_slots(seq_id, len(token_ids))`. ValueError if the sequence is already registered.
        """
        if seq_id in self._tables:
            raise ValueError(f"match_prefix: sequence {seq_id!r} is already registered")
        hits: list[int] = []
        if self.enable_prefix_caching:
            bs, parent = self.block_size, _ROOT_HASH
            for i in range((len(token_ids) - 1) // bs):
                tokens = tuple(token_ids[i * bs:(i + 1) * bs])
                parent = chain_hash(parent, tokens)
                block = self._hash_to_block.get(parent)
                if block is None or self._tokens[block] != tokens:  # miss, or a hash collision
                    break
                hits.append(block)
            for block in hits:
                self._cached.pop(block, None)  # a cached ref-0 block goes back to used
                self._incref(block)
            self.stats.queries += len(token_ids)
            self.stats.hits += len(hits) * bs
        self._tables[seq_id] = hits
        self._num_hashed[seq_id] = len(hits)
        self._num_tokens[seq_id] = len(hits) * self.block_size
        return self._num_tokens[seq_id]

    def cached_prefix_tokens(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of `token_ids` `match_prefix` would cover now (changes nothing)."""
        if not self.enable_prefix_caching:
            return 0
        bs, parent, n = self.block_size, _ROOT_HASH, 0
        for i in range((len(token_ids) - 1) // bs):
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            parent = chain_hash(parent, tokens)
            block = self._hash_to_block.get(parent)
            if block is None or self._tokens[block] != tokens:
                break
            n += bs
        return n

    def commit(self, seq_id: Hashable, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Record that KV for `token_ids[:num_computed_tokens]` has been written.

        Each block that is now full and not yet hashed gets its chain hash, which makes it reusable by
        `match_prefix` (after this sequence frees it, or right away by other sequences). If another
        block already holds that hash, the existing mapping is kept (no dedupe). Partial blocks are
        never hashed. ValueError if more tokens are claimed than given or allocated.
        """
        table = self._table(seq_id)
        if not 0 <= num_computed_tokens <= min(len(token_ids), self._num_tokens[seq_id]):
            raise ValueError(
                f"commit: num_computed_tokens={num_computed_tokens} outside [0, min(len(token_ids)="
                f"{len(token_ids)}, allocated={self._num_tokens[seq_id]})] for {seq_id!r}")
        if not self.enable_prefix_caching:
            return
        bs, start = self.block_size, self._num_hashed[seq_id]
        end = num_computed_tokens // bs
        for i in range(start, end):
            block = table[i]
            parent = self._hash[table[i - 1]] if i else _ROOT_HASH
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            digest = chain_hash(parent, tokens)
            if self._hash[block] is not None:  # shared through fork; a sibling committed it first
                if self._hash[block] != digest:
                    raise ValueError(f"commit: tokens of block {i} of {seq_id!r} differ from its KV")
                continue
            self._hash[block], self._tokens[block] = digest, tokens
            self._hash_to_block.setdefault(digest, block)
        self._num_hashed[seq_id] = max(start, end)

    # ---- allocation ----------------------------------------------------------------------------
    def allocate_slots(self, seq_id: Hashable, num_tokens: int) -> Allocation | None:
        """Grow the sequence's table to hold `num_tokens` tokens in total (registering it if new).

        All-or-nothing: returns None and changes nothing if too few blocks are allocatable. New blocks
        come from the free list, then by evicting the least-recently-freed cached block. If the last
        block is partially filled and shared (after `fork`) and the sequence grows into it, it is
        copied on write: a fresh block replaces it and the returned `BlockCopy` must be applied first.
        Asking for fewer tokens than already allocated is a no-op (tables never shrink).
        """
        if num_tokens < 0:
            raise ValueError(f"allocate_slots: num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(seq_id, [])
        held = self._num_tokens.get(seq_id, 0)
        if num_tokens <= held:
            self._register(seq_id)
            return Allocation()
        cow = held % self.block_size != 0 and self._ref[table[-1]] > 1
        num_new = -(-num_tokens // self.block_size) - len(table)
        if num_new + cow > self.num_free_blocks():
            return None
        table = self._register(seq_id)
        copies = ()
        if cow:
            old, new = table[-1], self._take()
            self._ref[old] -= 1  # still > 0: another table holds it
            table[-1] = new
            copies = (BlockCopy(old, new),)
        new_blocks = tuple(self._take() for _ in range(num_new))
        table.extend(new_blocks)
        self._num_tokens[seq_id] = num_tokens
        return Allocation(new_blocks, copies)

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Register `child_id` sharing every block of `parent_id` (ref+1 each).

        Call between steps, when the parent's allocated slots hold computed KV: whichever sequence first
        grows into the shared partial last block gets a copy (see `allocate_slots`).
        """
        table = self._table(parent_id)
        if child_id in self._tables:
            raise ValueError(f"fork: sequence {child_id!r} is already registered")
        for block in table:
            self._incref(block)
        self._tables[child_id] = list(table)
        self._num_tokens[child_id] = self._num_tokens[parent_id]
        self._num_hashed[child_id] = self._num_hashed[parent_id]

    def free(self, seq_id: Hashable) -> None:
        """Drop the sequence and its references. A block whose last reference goes becomes cached if
        it is the one registered for its hash, else free. Tail blocks are queued for eviction before
        head blocks, which more sequences can share. KeyError on an unknown or already-freed sequence.
        """
        if seq_id not in self._tables:
            raise KeyError(f"free: sequence {seq_id!r} is not registered (unknown or already freed)")
        table = self._tables.pop(seq_id)
        del self._num_tokens[seq_id], self._num_hashed[seq_id]
        for block in reversed(table):
            self._ref[block] -= 1
            if self._ref[block]:
                continue
            self._used.remove(block)
            digest = self._hash[block]
            if digest is not None and self._hash_to_block.get(digest) == block:
                self._cached[block] = None
            else:
                self._forget(block)
                self._free.append(block)

    def reset_prefix_cache(self) -> None:
        """Forget every cached (ref-0) block; blocks in use keep their hashes."""
        while self._cached:
            block, _ = self._cached.popitem(last=False)
            del self._hash_to_block[self._hash[block]]
            self._forget(block)
            self._free.append(block)

    # ---- internals -----------------------------------------------------------------------------
    def _table(self, seq_id: Hashable) -> list[int]:
        try:
            return self._tables[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id!r} is not registered") from None

    def _register(self, seq_id: Hashable) -> list[int]:
        if seq_id not in self._tables:
            self._tables[seq_id], self._num_tokens[seq_id], self._num_hashed[seq_id] = [], 0, 0
        return self._tables[seq_id]

    def _incref(self, block: int) -> None:
        self._ref[block] += 1
        self._used.add(block)

    def _forget(self, block: int) -> None:
        self._hash[block] = self._tokens[block] = None

    def _take(self) -> int:
        """A block with ref 1: from the free list, else evict the least-recently-freed cached one."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._cached.popitem(last=False)
            del self._hash_to_block[self._hash[block]]
            self._forget(block)
        self._incref(block)
        return block

    def check_invariants(self) -> None:
        """Raise AssertionError(message) if the bookkeeping is inconsistent. O(num_blocks + tables)."""
        free, used, cached = set(self._free), self._used, set(self._cached)
        assert len(free) == len(self._free), "free list holds a block twice"
        assert len(free) + len(used) + len(cached) == self.num_blocks, (
            f"free {len(free)} + used {len(used)} + cached {len(cached)} != total {self.num_blocks}")
        assert free | used | cached == set(range(self.num_blocks)), "a block is in no set or twice"
        refs = Counter(b for table in self._tables.values() for b in table)
        for block, ref in enumerate(self._ref):
            assert ref >= 0, f"block {block} has negative refcount {ref}"
            assert ref == refs[block], f"block {block}: ref {ref} != {refs[block]} table entries"
            assert (ref > 0) == (block in used), f"block {block}: ref {ref} but used={block in used}"
            assert (self._hash[block] is None) == (self._tokens[block] is None), f"block {block}"
        for block in free:
            assert self._hash[block] is None, f"free block {block} still has a hash"
        for block in cached:
            digest = self._hash[block]
            assert digest is not None and self._hash_to_block.get(digest) == block, (
                f"cached block {block} is not registered under its hash")
        for digest, block in self._hash_to_block.items():
            assert self._hash[block] == digest, f"hash map points at block {block} that lacks it"
        for seq_id, table in self._tables.items():
            need = -(-self._num_tokens[seq_id] // self.block_size)
            assert len(table) == need, f"{seq_id!r}: {len(table)} blocks for {need} needed"
            hashed = self._num_hashed[seq_id]
            assert hashed <= len(table), f"{seq_id!r}: {hashed} hashed of {len(table)} blocks"
            if self.enable_prefix_caching:
                assert all(self._hash[b] is not None for b in table[:hashed]), f"{seq_id!r} hashes"
