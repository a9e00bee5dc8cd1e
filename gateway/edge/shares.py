"""Client addresses in, a bounded share of the upstream pool per address out.

The upstream pool is shared by every visitor of a worker: without a share, one address
opening slow requests by the hundred holds every pooled connection and the site answers
nobody else (a 504 after `upstream_connect_timeout`).
"""

from __future__ import annotations

from collections import Counter


class ClientShares:
    """At most `per_client` upstream exchanges at once per client address."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._held: Counter[str] = Counter()
        self.refused = 0

    def take(self, client: str) -> bool:
        """Take one of `client`'s slots; False (nothing taken) when all are in use."""
        if self._held[client] >= self.per_client:
            self.refused += 1
            return False
        self._held[client] += 1
        return True

    def give_back(self, client: str) -> None:
        """Return a slot taken with `take`."""
        left = self._held[client] - 1
        if left > 0:
            self._held[client] = left
        else:
            del self._held[client]  # no entry per address that ever came by

    def held(self, client: str) -> int:
        """Slots `client` holds now."""
        return self._held.get(client, 0)
