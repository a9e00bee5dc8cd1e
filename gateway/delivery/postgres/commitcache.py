"""The visit cache as one group commit sees it, when a replica's commits overlap."""

from __future__ import annotations

from gateway.delivery.visitcache import Seen, VisitCache


class CommitCache(VisitCache):
    """One group commit's view of the replica's visit cache: reads the shared states,
    stages its own apart, and keeps them in the shared cache only when it commits.

    Commits overlap; with one staging area for all, a commit that failed would have had the
    states of one still running kept or dropped with its own.
    """

    def __init__(self, shared: VisitCache) -> None:
        self.shared = shared
        self.size = shared.size
        self._staged: dict[tuple[str, str], Seen] = {}

    @property
    def hits(self) -> int:
        return self.shared.hits

    @hits.setter
    def hits(self, value: int) -> None:
        self.shared.hits = value

    @property
    def misses(self) -> int:
        return self.shared.misses

    @misses.setter
    def misses(self, value: int) -> None:
        self.shared.misses = value

    def get(self, key: tuple[str, str]) -> Seen | None:
        """The shared cache's state of a visitor."""
        return self.shared.get(key)

    def settle(self) -> None:
        """This commit committed: its states go into the shared cache."""
        self.shared.stage(self._staged)
        self.shared.settle()
        self._staged = {}
