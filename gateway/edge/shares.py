"""Client addresses in, a bounded share of the upstream pool per address out.

The upstream pool is shared by every visitor of a worker: without a share, one address
opening slow requests by the hundred holds every pooled connection and the site answers
nobody else (a 504 after `upstream_connect_timeout`).
"""

from __future__ import annotations


class ClientShares:
    """At most `per_client` upstream exchanges at once per client address."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        # A plain dict: Counter's __missing__ is a Python call on every new address, and
        # every proxied request takes and gives back a slot.
        self._held: dict[str, int] = {}
        self.refused = 0

    def take(self, client: str) -> bool:
        """Take one of `client`'s slots; False (nothing taken) when all are in use."""
        held = self._held.get(client, 0)
        if held >= self.per_client:
            self.refused += 1
            return False
        self._held[client] = held + 1
        return True

    def give_back(self, client: str) -> None:
        """Return a slot taken with `take`."""
        left = self._held.get(client, 0) - 1
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)  # no entry per address that ever came by

    def held(self, client: str) -> int:
        """Slots `client` holds now."""
        return self._held.get(client, 0)
