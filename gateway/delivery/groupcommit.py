"""Group commit, shared by both stores: accepted events in, batches for one transaction out.

Requests queue their events; the store's writer takes whatever arrives within its window
(up to `MAX_BATCH` events; what is over stays queued for the next one) and commits it at
once, then settles each request's future.
"""

from __future__ import annotations

import asyncio
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
    size = len(first.events)
    if window > 0 and size < MAX_BATCH:
        # One timer for the window, then take what came: waiting on the queue per arriving
        # request cost a task and a timer each (~10 steps of the loop per stored page).
        await asyncio.sleep(window)
    while size < MAX_BATCH:
        try:
            nxt = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
        size += len(nxt.events)
    return batch, False
