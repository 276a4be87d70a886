"""The mass-removal guard: a listing that would mark many assets removed is refused, not applied.

An empty or shrunken listing looks exactly like "these assets were delisted": ``[]`` from a file,
an error page a proxy turned into ``[]``, an API hiccup that returns a fraction of the list.
Applying it would mark thousands of rows removed and publish thousands of removals, which every
subscriber then acts on. Real delistings come a few at a time, so a cycle that would remove more
than the larger of ``max_share`` of the listed assets and ``max_removals`` is refused whole: it
writes nothing and publishes nothing, and says how many it would have removed. An empty complete
listing is always refused. ``allow`` (``--allow-mass-removal``) applies such a listing once a
person has checked it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_SHARE = 0.05
DEFAULT_MAX_REMOVALS = 100
ALLOW_FLAG = "--allow-mass-removal"


class MassRemovalRefused(RuntimeError):
    """A cycle was refused before it wrote or published anything."""

    def __init__(self, message: str, *, removing: int, listed: int):
        super().__init__(message)
        self.removing = removing
        self.listed = listed


@dataclass(frozen=True)
class RemovalGuard:
    max_share: float = DEFAULT_MAX_SHARE  # of the assets listed (not removed) before the cycle
    max_removals: int = DEFAULT_MAX_REMOVALS  # removals always allowed, however few are listed
    allow: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"the removal share must be between 0 and 1, not {self.max_share}")
        if self.max_removals < 0:
            raise ValueError(f"the removal count must not be negative, not {self.max_removals}")

    def limit(self, listed: int) -> int:
        """The most removals a cycle may make when ``listed`` assets are listed before it."""
        return max(int(self.max_share * listed), self.max_removals)

    def check(self, *, removing: int, listed: int, fetched: int, complete: bool) -> None:
        """Raise MassRemovalRefused unless a cycle that marks ``removing`` of the ``listed``
        assets removed, from a listing of ``fetched`` assets, may go ahead. ``complete``: the
        listing is the whole list (only a complete listing removes anything)."""
        if self.allow:
            return
        if complete and fetched == 0:
            raise MassRemovalRefused(
                f"refused: the listing is empty; applying it would mark all {removing} listed "
                f"assets removed. Nothing was written or published ({ALLOW_FLAG} applies it)",
                removing=removing,
                listed=listed,
            )
        limit = self.limit(listed)
        if removing > limit:
            raise MassRemovalRefused(
                f"refused: the listing would mark {removing} of {listed} assets removed, more "
                f"than the limit of {limit} (the larger of {self.max_share * 100:g} % of them and "
                f"{self.max_removals}). Nothing was written or published ({ALLOW_FLAG} applies it)",
                removing=removing,
                listed=listed,
            )
