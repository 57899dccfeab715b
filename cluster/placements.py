"""Which placement-group bundle each worker actor sits in. Pure Python (groups are opaque here).

Ray reserves a placement group's bundles until the whole group is removed; a single bundle can
be neither added nor released. The book therefore tracks, per group, which bundle holds which
worker and which bundles are free::

    book.add("d", group, size)          # a reserved group of ``size`` free bundles for pool "d"
    p = book.take("d", "d3")            # a free bundle of pool "d" (lowest first), now d3's; None: none free
    book.release("d3")                  # → the group, to remove, when no worker is left in it; else None

Invariant (``check``): every bundle of every group is free or held by exactly one worker, and
every worker holds exactly one bundle. A bundle freed by a scale-down stays reserved for its pool
until the next scale-up of that pool takes it or the group's last worker leaves (then the group
is removed and its resources return to Ray), so reserved resources are always the live workers'
plus those free bundles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Placement:
    """One bundle: ``group`` (a Ray ``PlacementGroup``) and the bundle's index in it."""

    group: Any
    index: int


@dataclass(eq=False)                 # compared by identity
class _Group:
    pool: str
    group: Any
    holders: list[str | None] = field(default_factory=list)    # bundle index → worker id or None


class Placements:
    """The book (see the module docstring). Not thread-safe: one owner (the builder, then the
    controller's event loop) uses it at a time."""

    def __init__(self) -> None:
        self._groups: list[_Group] = []
        self._where: dict[str, tuple[_Group, int]] = {}

    def add(self, pool: str, group: Any, size: int) -> None:
        """Book a reserved group of ``size`` bundles for ``pool``, all free."""
        if size < 1:
            raise ValueError(f"a placement group needs at least one bundle, got {size}")
        if any(g.group is group for g in self._groups):
            raise ValueError("this placement group is already in the book")
        self._groups.append(_Group(pool, group, [None] * size))

    def take(self, pool: str, worker: str) -> Placement | None:
        """Give ``worker`` a free bundle of ``pool`` (oldest group, lowest index first); None when
        the pool has no free bundle (the caller reserves a new group and ``add``s it)."""
        if worker in self._where:
            raise ValueError(f"worker {worker} already holds a bundle")
        for g in self._groups:
            if g.pool != pool:
                continue
            for i, holder in enumerate(g.holders):
                if holder is None:
                    g.holders[i] = worker
                    self._where[worker] = (g, i)
                    return Placement(g.group, i)
        return None

    def release(self, worker: str) -> Any | None:
        """Free ``worker``'s bundle. Returns its group when no worker is left in it (the caller
        removes it from Ray; the book has already dropped it), else None. Unknown worker: None."""
        where = self._where.pop(worker, None)
        if where is None:
            return None
        g, i = where
        g.holders[i] = None
        if any(h is not None for h in g.holders):
            return None
        self._groups.remove(g)
        return g.group

    def frees_group(self, worker: str) -> bool:
        """Whether releasing ``worker`` would give its group's resources back to Ray."""
        where = self._where.get(worker)
        return where is not None and all(h in (None, worker) for h in where[0].holders)

    def groups(self) -> list[Any]:
        """Every group in the book (reserved in Ray now)."""
        return [g.group for g in self._groups]

    def workers(self) -> set[str]:
        return set(self._where)

    def free_bundles(self, pool: str) -> int:
        return sum(h is None for g in self._groups if g.pool == pool for h in g.holders)

    def check(self) -> None:
        """Raise AssertionError if the invariant (module docstring) does not hold."""
        held = [(h, g, i) for g in self._groups for i, h in enumerate(g.holders) if h is not None]
        assert len(held) == len({h for h, _, _ in held}), "a worker holds two bundles"
        assert {h for h, _, _ in held} == set(self._where), "holders and workers disagree"
        for h, g, i in held:
            assert self._where[h][0] is g and self._where[h][1] == i, f"worker {h} is booked twice"
