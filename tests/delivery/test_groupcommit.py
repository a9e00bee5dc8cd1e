"""Group commit: one batch per window, without a wait (a task) per arriving request."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.delivery import groupcommit
from gateway.delivery.groupcommit import Pending, next_batch
from gateway.models import NewEvent


def _event(n: int) -> NewEvent:
    return NewEvent("1", "PageView", f"e{n}", 1, {}, {}, "proxy")


async def test_requests_arriving_within_the_window_make_one_batch_without_a_task_each() -> None:
    queue: asyncio.Queue[Pending | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    created: list[Any] = []

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    queue.put_nowait(Pending([_event(0)]))
    batching = asyncio.ensure_future(next_batch(queue, 0.05))
    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        for n in range(1, 40):
            await asyncio.sleep(0)
            queue.put_nowait(Pending([_event(n)]))
        batch, stop = await batching
    finally:
        loop.set_task_factory(None)
    assert not stop
    assert [p.events[0].event_id for p in batch] == [f"e{n}" for n in range(40)]
    assert created == []


async def test_a_batch_stops_at_max_batch_and_leaves_the_rest_queued(monkeypatch: Any) -> None:
    monkeypatch.setattr(groupcommit, "MAX_BATCH", 3)
    queue: asyncio.Queue[Pending | None] = asyncio.Queue()
    for n in range(5):
        queue.put_nowait(Pending([_event(n)]))
    queue.put_nowait(None)
    batch, stop = await next_batch(queue, 0.0)
    assert (len(batch), stop) == (3, False)
    batch, stop = await next_batch(queue, 0.01)
    assert (len(batch), stop) == (2, True)
