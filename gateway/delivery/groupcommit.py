"""Group commit, shared by both stores: accepted events in, batches for one transaction out.

Requests queue their events; the store's writer takes whatever arrives within its window
(up to `MAX_BATCH` events) and commits it at once, then settles each request's future.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome

# Events per transaction at most: a burst is committed in several, never one unbounded one.
MAX_BATCH = 5000


@dataclass(slots=True)
class Pending:
    """One request's events, and the future its caller awaits."""

    events: Sequence[NewEvent]
    done: asyncio.Future[list[Outcome]] = field(default_factory=lambda: asyncio.Future())


async def next_batch(
    queue: asyncio.Queue[Pending | None], window: float
) -> tuple[list[Pending], bool]:
    """The next batch to commit, and whether the stop marker (None) was met.

    An empty batch with True: the queue was stopped with nothing left to commit.
    """
    first = await queue.get()
    if first is None:
        return [], True
    batch = [first]
    deadline = time.monotonic() + window
    while sum(len(p.events) for p in batch) < MAX_BATCH:
        remaining = deadline - time.monotonic()
        try:
            nxt = (
                queue.get_nowait()
                if remaining <= 0
                else await asyncio.wait_for(queue.get(), remaining)
            )
        except (asyncio.QueueEmpty, TimeoutError):
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
    return batch, False
