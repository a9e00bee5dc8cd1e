"""Plain data passed between stages: what the pipeline produces and the outbox stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Meta refuses events older than this (seconds); one stale event voids its whole request.
META_WINDOW = 7 * 86400
# Meta's standard event names; any other name is a custom event.
STANDARD_EVENTS = frozenset(
    """AddPaymentInfo AddToCart AddToWishlist CompleteRegistration Contact CustomizeProduct
    Donate FindLocation InitiateCheckout Lead PageView Purchase Schedule Search StartTrial
    SubmitApplication Subscribe ViewContent""".split()
)


def row_key(pixel_id: str, event_name: str, event_id: str) -> str:
    """The unique key of an outbox row, also the associated data of its sealed fields."""
    return f"{pixel_id}\x1f{event_name}\x1f{event_id}"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready to store: the CAPI payload with hashed user_data, plus clear fields.

    `clear` holds the user_data fields Meta wants unhashed (IP, user agent, fbp, fbc, ...):
    the outbox seals them at rest and merges them back only to send.
    """

    pixel_id: str
    event_name: str
    event_id: str
    event_time: int
    payload: dict[str, Any]
    clear: dict[str, Any]
    source: str
    test_event_code: str | None = None
    rule: str | None = None
    # Seconds to wait before the first send, so that copies of the event can meet (a proxy
    # PageView waits for its browser beacon, a Purchase for its payment webhook). None: the
    # outbox's default (`assembly_hold`, or none for a PageView).
    hold: float | None = None
    # The `[[sites]]` site the event came through (None without sites); stored with it.
    site: str | None = None
    # The stitch keys (name, normalized value: an order id, a hashed email, ...) that tie
    # the event to a visit: the visitor's profile is kept and found under them too.
    links: tuple[tuple[str, str], ...] = ()
    # The proxy minted the event's `_fbp` on the response it came with: no store can hold an
    # earlier view of this visitor, so recording its visit reads nothing (see insightrecord).
    new_visitor: bool = False

    def row_key(self) -> str:
        """See `row_key`."""
        return row_key(self.pixel_id, self.event_name, self.event_id)
