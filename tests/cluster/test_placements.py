"""The placement book: bundles held by one worker each, freed bundles reused by the same pool,
a group handed back for removal exactly when its last worker leaves (no Ray needed)."""

from __future__ import annotations

import pytest

from cluster.placements import Placement, Placements


def test_a_pools_group_fills_lowest_bundle_first_and_other_pools_never_share_it():
    book, pool_group = Placements(), object()
    book.add("d", pool_group, 2)
    assert book.take("d", "d0") == Placement(pool_group, 0)
    assert book.take("d", "d1") == Placement(pool_group, 1)
    assert book.take("d", "d2") is None and book.take("p", "p0") is None     # full; no "p" group
    book.check()


def test_a_freed_bundle_stays_reserved_for_its_pool_until_the_group_is_empty():
    book, pool_group, extra = Placements(), object(), object()
    book.add("d", pool_group, 2)
    book.take("d", "d0"), book.take("d", "d1")
    book.add("d", extra, 1)
    book.take("d", "d2")
    assert book.frees_group("d2") and not book.frees_group("d1")
    assert book.release("d1") is None and book.free_bundles("d") == 1       # d0 still in it
    assert book.take("d", "d3") == Placement(pool_group, 1)                 # reused before a new group
    assert book.release("d2") is extra and book.groups() == [pool_group]    # its own group: removed
    book.release("d0")
    assert book.frees_group("d3") and book.release("d3") is pool_group and book.groups() == []
    assert book.release("d3") is None                                       # unknown now: nothing
    book.check()


def test_bad_use_is_refused():
    book, group = Placements(), object()
    with pytest.raises(ValueError):
        book.add("d", group, 0)
    book.add("d", group, 1)
    with pytest.raises(ValueError):
        book.add("d", group, 1)
    book.take("d", "d0")
    with pytest.raises(ValueError):
        book.take("d", "d0")
