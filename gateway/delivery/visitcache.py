"""The last known visit state of recently seen visitors, kept in memory in front of the store.

The store is the truth (workers and replicas share it); this cache only spares reading it
where a stale entry cannot change the answer (see `VisitCache`). Bounded, least recently
used first out; what a batch leaves behind is staged and kept only once it has committed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.pipeline.channels import VisitSource


@dataclass(frozen=True, slots=True)
class Seen:
    """What the store knows of a visitor before a batch: last page view, current visit."""

    last_seen: float | None
    current: VisitSource | None


class VisitCache:
    """The last known state of recently seen visitors, in front of the store.

    It answers only what a stale entry cannot get wrong: an untagged page view within
    `visit_timeout` of the last view it knows continues the visit (another worker or replica
    can only have seen the visitor more recently, which keeps the visit going all the more).
    A tagged view, a time-out or a visitor it does not know is read from the store. States
    of a batch are staged and kept only once its transaction has committed (`settle`).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._known: OrderedDict[tuple[str, str], Seen] = OrderedDict()
        self._staged: dict[tuple[str, str], Seen] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> Seen | None:
        """The known state of a visitor, if any."""
        return self._known.get(key)

    def stage(self, states: Mapping[tuple[str, str], Seen]) -> None:
        """States a batch being committed leaves behind."""
        self._staged.update(states)

    def settle(self) -> None:
        """The batch committed: keep its states (the oldest beyond `size` go)."""
        for key, seen in self._staged.items():
            self._known[key] = seen
            self._known.move_to_end(key)
        self._staged.clear()
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def discard(self) -> None:
        """The batch did not commit: forget its states."""
        self._staged.clear()
