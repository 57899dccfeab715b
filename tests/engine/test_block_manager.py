"""Specification of engine.block_manager: refcounted paged-KV blocks with prefix caching."""
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import engine.block_manager as block_manager
from engine.block_manager import Allocation, BlockCopy, BlockManager


def prefill(bm: BlockManager, seq_id, tokens) -> int:
    """What the engine does for a new sequence: match, allocate, compute, commit."""
    hit = bm.match_prefix(seq_id, tokens)
    assert bm.allocate_slots(seq_id, len(tokens)) is not None
    bm.commit(seq_id, tokens, len(tokens))
    return hit


def snapshot(bm: BlockManager, seq_ids):
    return bm.num_free_blocks(), bm.usage(), {s: bm.block_table(s) for s in seq_ids if bm.has_seq(s)}


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0), (-1, 4)])
def test_constructor_rejects_nonpositive_sizes(num_blocks, block_size):
    with pytest.raises(ValueError, match="must be >= 1"):
        BlockManager(num_blocks, block_size)


def test_allocation_returns_none_and_changes_nothing_when_short():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.allocate_slots("a", 12) is not None  # 3 of 4 blocks
    before = snapshot(bm, ["a", "b"])
    assert bm.allocate_slots("b", 8) is None  # new sequence needs 2
    assert bm.allocate_slots("a", 20) is None  # existing sequence needs 2 more
    assert snapshot(bm, ["a", "b"]) == before
    assert not bm.has_seq("b")
    bm.check_invariants()


def test_free_returns_blocks_to_the_pool():
    bm = BlockManager(num_blocks=4, block_size=4)
    alloc = bm.allocate_slots("a", 10)
    assert alloc == Allocation(new_blocks=tuple(bm.block_table("a")), copies=())
    assert (bm.num_free_blocks(), bm.usage()) == (1, 0.75)
    bm.free("a")
    assert (bm.num_free_blocks(), bm.usage()) == (4, 0.0)
    bm.check_invariants()


def test_prefix_hit_after_commit_and_free_reuses_same_blocks_and_counts_hits():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))  # two full blocks and one token
    assert prefill(bm, "a", tokens) == 0
    first_blocks = bm.block_table("a")[:2]
    bm.free("a")
    assert bm.match_prefix("b", tokens) == 8
    assert bm.block_table("b") == first_blocks
    assert (bm.stats.queries, bm.stats.hits) == (18, 8)
    assert bm.stats.hit_rate == pytest.approx(8 / 18)
    bm.check_invariants()


def test_running_sequences_share_prefix_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    prefill(bm, "a", [1, 2, 3, 4, 5])
    assert prefill(bm, "b", [1, 2, 3, 4, 6]) == 4
    assert bm.block_table("a")[0] == bm.block_table("b")[0]
    assert bm.block_table("a")[1] != bm.block_table("b")[1]
    bm.check_invariants()


def test_hit_never_covers_the_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(8))  # exactly two full blocks
    prefill(bm, "a", tokens)
    bm.free("a")
    assert bm.match_prefix("b", tokens) == 4  # the caller must still compute token 7 for logits


def test_partial_blocks_are_never_hashed():
    bm = BlockManager(num_blocks=8, block_size=4)
    prefill(bm, "a", [1, 2, 3, 4, 5, 6])  # second block holds 2 of 4 tokens
    bm.allocate_slots("c", 8)
    bm.commit("c", [7, 7, 7, 7, 8, 8, 8, 8], 7)  # second block full but only 3 tokens computed
    bm.free("a")
    bm.free("c")
    assert bm.match_prefix("b", [1, 2, 3, 4, 5, 6, 0, 0, 0]) == 4
    assert bm.match_prefix("d", [7, 7, 7, 7, 8, 8, 8, 8, 0]) == 4


def test_eviction_drops_the_hash():
    bm = BlockManager(num_blocks=2, block_size=4)
    tokens = [1, 2, 3, 4, 5]
    prefill(bm, "a", tokens)
    bm.free("a")  # block 0 cached, block 1 free
    assert bm.num_free_blocks() == 2
    assert bm.allocate_slots("c", 8) is not None  # takes the free block, then evicts the cached one
    bm.free("c")
    assert bm.match_prefix("d", tokens) == 0
    bm.check_invariants()


def test_eviction_takes_the_least_recently_freed_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    prefill(bm, "a", [0, 0, 9])
    prefill(bm, "b", [1, 1, 9])
    bm.free("a")
    bm.free("b")
    assert bm.allocate_slots("c", 6) is not None  # two free blocks, then evicts a's cached block
    assert bm.match_prefix("x", [0, 0, 9]) == 0
    assert bm.match_prefix("y", [1, 1, 9]) == 2


def test_fork_shares_blocks_and_append_copies_on_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    prefill(bm, "a", [1, 2, 3, 4, 5, 6])  # last block partially filled
    used = bm.usage()
    bm.fork("a", "b")
    assert bm.block_table("b") == bm.block_table("a") and bm.usage() == used
    full, partial = bm.block_table("a")
    alloc = bm.allocate_slots("b", 7)
    (copy,) = alloc.copies
    assert alloc.new_blocks == () and copy == BlockCopy(src=partial, dst=copy.dst)
    assert bm.block_table("b") == [full, copy.dst] and bm.block_table("a") == [full, partial]
    assert bm.allocate_slots("a", 7) == Allocation()  # no longer shared: written in place
    bm.check_invariants()


def test_fork_with_full_last_block_appends_without_copy():
    bm = BlockManager(num_blocks=8, block_size=4)
    prefill(bm, "a", [1, 2, 3, 4])
    bm.fork("a", "b")
    alloc = bm.allocate_slots("b", 5)
    assert alloc.copies == () and len(alloc.new_blocks) == 1
    bm.check_invariants()


def test_double_free_and_unknown_sequence_raise_key_error():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate_slots("a", 4)
    bm.free("a")
    with pytest.raises(KeyError, match="already freed"):
        bm.free("a")
    with pytest.raises(KeyError, match="not registered"):
        bm.free("never-seen")
    bm.check_invariants()


def test_match_prefix_rejects_a_registered_sequence():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.match_prefix("a", [1, 2, 3])
    with pytest.raises(ValueError, match="already registered"):
        bm.match_prefix("a", [1, 2, 3])


def test_match_prefix_registers_the_sequence_on_a_miss():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.match_prefix("a", [1, 2, 3, 4, 5]) == 0
    assert bm.has_seq("a") and bm.block_table("a") == []


def test_disabled_prefix_caching_never_hits():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    tokens = list(range(9))
    prefill(bm, "a", tokens)
    bm.free("a")
    assert bm.match_prefix("b", tokens) == 0
    assert bm.num_free_blocks() == 8
    bm.check_invariants()


def test_reset_prefix_cache_forgets_cached_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))
    prefill(bm, "a", tokens)
    bm.free("a")
    bm.reset_prefix_cache()
    assert bm.match_prefix("b", tokens) == 0
    bm.check_invariants()


def test_duplicate_content_keeps_the_first_mapping():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = [1, 2, 3, 4, 5]
    for seq_id in ("a", "b"):  # both miss: neither has committed yet
        assert bm.match_prefix(seq_id, tokens) == 0
        bm.allocate_slots(seq_id, len(tokens))
    bm.commit("a", tokens, 5)
    bm.commit("b", tokens, 5)
    first = bm.block_table("a")[0]
    bm.free("b")
    bm.free("a")
    assert bm.match_prefix("c", tokens) == 4 and bm.block_table("c") == [first]
    bm.check_invariants()


def test_hash_collisions_are_rejected_by_comparing_tokens(monkeypatch):
    monkeypatch.setattr(block_manager, "chain_hash", lambda parent, tokens: b"same")
    bm = BlockManager(num_blocks=8, block_size=4)
    prefill(bm, "a", [1, 2, 3, 4, 5])
    bm.free("a")
    assert bm.match_prefix("b", [9, 9, 9, 9, 5]) == 0


def test_check_invariants_detects_a_corrupt_refcount():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate_slots("a", 4)
    bm._ref[bm.block_table("a")[0]] += 1
    with pytest.raises(AssertionError, match="ref 2 != 1"):
        bm.check_invariants()


class BlockManagerMachine(RuleBasedStateMachine):
    """Random add / extend / fork / free traffic against a model of the KV each slot holds.

    The model records, per block slot, the token prefix its KV was computed for. After every step each
    live sequence must read back its own prefix at every position: this catches a wrong prefix hit, a
    write into a shared block without copy-on-write, and a block reused while still referenced.
    """

    caching = True
    tokens_st = st.lists(st.integers(0, 2), min_size=1, max_size=20)  # small vocab: prefixes repeat

    @initialize(num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4]))
    def setup(self, num_blocks, block_size):
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=self.caching)
        self.bs = block_size
        self.tokens: dict[int, list[int]] = {}  # live sequence -> tokens with computed KV
        self.kv: dict[int, list] = {}  # block -> per-slot prefix its KV was computed for
        self.next_id = 0
        self.queries = self.hits = 0

    def _write(self, seq_id, start, stop):
        table, tokens = self.bm.block_table(seq_id), self.tokens[seq_id]
        for pos in range(start, stop):
            slots = self.kv.setdefault(table[pos // self.bs], [None] * self.bs)
            slots[pos % self.bs] = tuple(tokens[: pos + 1])

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    @rule(tokens=tokens_st, cut=st.integers(0, 20))
    def add(self, tokens, cut):
        seq_id = self._new_id()
        hit = self.bm.match_prefix(seq_id, tokens)
        self.queries, self.hits = self.queries + len(tokens) * self.caching, self.hits + hit
        assert hit % self.bs == 0 and hit <= (len(tokens) - 1) // self.bs * self.bs
        if not self.caching:
            assert hit == 0
        if hit:
            event("prefix hit")
        hit_blocks, before = self.bm.block_table(seq_id), snapshot(self.bm, self.tokens)
        alloc = self.bm.allocate_slots(seq_id, len(tokens))
        if alloc is None:
            event("allocation refused")
            assert snapshot(self.bm, self.tokens) == before and self.bm.block_table(seq_id) == hit_blocks
            self.bm.free(seq_id)
            return
        assert alloc.copies == () and self.bm.block_table(seq_id) == hit_blocks + list(alloc.new_blocks)
        self.tokens[seq_id] = list(tokens)
        self._check_kv(seq_id, hit)  # the hit blocks already hold this exact prefix
        cut = min(max(cut, hit), len(tokens))  # chunked prefill: two commits
        for start, stop in ((hit, cut), (cut, len(tokens))):
            self._write(seq_id, start, stop)
            self.bm.commit(seq_id, tokens, stop)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), more=st.lists(st.integers(0, 2), min_size=1, max_size=6))
    def extend(self, data, more):
        seq_id = data.draw(st.sampled_from(sorted(self.tokens)))
        old, before = self.bm.block_table(seq_id), snapshot(self.bm, self.tokens)
        tokens = self.tokens[seq_id] + more
        alloc = self.bm.allocate_slots(seq_id, len(tokens))
        if alloc is None:
            event("allocation refused")
            assert snapshot(self.bm, self.tokens) == before
            return
        partial = len(self.tokens[seq_id]) % self.bs != 0
        shared = any(old[-1] in self.bm.block_table(s) for s in self.tokens if s != seq_id) if old else False
        assert len(alloc.copies) == (partial and shared)  # copy-on-write exactly when needed
        for copy in alloc.copies:
            event("copy-on-write")
            assert copy.src == old[-1] and copy.dst not in old
            self.kv[copy.dst] = list(self.kv[copy.src])
            old[-1] = copy.dst
        assert self.bm.block_table(seq_id) == old + list(alloc.new_blocks)
        start, self.tokens[seq_id] = len(self.tokens[seq_id]), tokens
        self._write(seq_id, start, len(tokens))
        self.bm.commit(seq_id, tokens, len(tokens))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child = self._new_id()
        self.bm.fork(parent, child)
        self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.tokens)))
        self.bm.free(seq_id)
        del self.tokens[seq_id]
        with pytest.raises(KeyError):
            self.bm.free(seq_id)

    @rule()
    def reset_prefix_cache(self):
        self.bm.reset_prefix_cache()

    def _check_kv(self, seq_id, upto):
        table, tokens = self.bm.block_table(seq_id), self.tokens[seq_id]
        for pos in range(upto):
            assert self.kv[table[pos // self.bs]][pos % self.bs] == tuple(tokens[: pos + 1])

    @invariant()
    def bookkeeping_is_consistent(self):
        self.bm.check_invariants()
        assert (self.bm.stats.queries, self.bm.stats.hits) == (self.queries, self.hits)
        for seq_id, tokens in self.tokens.items():
            assert len(self.bm.block_table(seq_id)) == -(-len(tokens) // self.bs)
            self._check_kv(seq_id, len(tokens))

    def teardown(self):
        if not hasattr(self, "bm"):
            return
        for seq_id in list(self.tokens):
            self.bm.free(seq_id)
        self.bm.check_invariants()  # covers: no negative refcount, every block in one set
        assert self.bm.usage() == 0.0 and self.bm.num_free_blocks() == self.bm.num_blocks


class BlockManagerWithoutCachingMachine(BlockManagerMachine):
    caching = False


_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestBlockManagerStateMachine = BlockManagerMachine.TestCase
TestBlockManagerStateMachine.settings = _settings
TestBlockManagerWithoutCaching = BlockManagerWithoutCachingMachine.TestCase
TestBlockManagerWithoutCaching.settings = settings(_settings, max_examples=50)
