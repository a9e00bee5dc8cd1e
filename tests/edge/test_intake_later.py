"""Background stores (PageViews): one store per commit for what was handed over meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from gateway.delivery.store import OutboxFull, OutboxStore
from gateway.edge.intake import Intake, Refused, Stored
from gateway.metrics import Metrics
from gateway.models import NewEvent


class SlowOutbox:
    """Takes rows once `go` is set; remembers every `add`."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.go = asyncio.Event()
        self.fail = fail

    async def add(self, events: Sequence[NewEvent]) -> list[str]:
        self.calls.append([e.event_id for e in events])
        await self.go.wait()
        if self.fail:
            raise OutboxFull("full")
        return ["merged" if e.event_id.endswith("m") else "new" for e in events]


def _rows(name: str, pixels: int = 1) -> list[NewEvent]:
    return [NewEvent(str(p), "PageView", name, 1, {}, {}, "proxy") for p in range(pixels)]


async def test_hand_overs_during_a_store_go_in_one_next_store_each_with_its_own_result() -> None:
    outbox = SlowOutbox()
    intake = Intake(cast(OutboxStore, outbox), Metrics(), later_window=0)
    results: dict[str, Any] = {}

    def done(name: str) -> Any:
        return lambda result: results.__setitem__(name, result)

    intake.store_later(_rows("a"), done("a"))
    await asyncio.sleep(0)
    for name in ("b", "cm", "d"):
        intake.store_later(_rows(name, pixels=2), done(name))
    outbox.go.set()
    await intake.drain()
    assert outbox.calls == [["a"], ["b", "b", "cm", "cm", "d", "d"]]
    assert all(isinstance(r, Stored) for r in results.values())
    assert results["cm"].outcomes == ["merged", "merged"]
    assert [r.event_id for r in results["d"].rows] == ["d", "d"]
    assert results["d"].outcomes == ["new", "new"]


async def test_a_refused_store_reaches_every_hand_over_and_counts_each() -> None:
    outbox = SlowOutbox(fail=True)
    outbox.go.set()
    intake = Intake(cast(OutboxStore, outbox), Metrics(), later_window=0)
    results: list[Stored | Refused] = []
    for name in ("a", "b", "c"):
        intake.store_later(_rows(name), results.append)
    await intake.drain()
    assert len(outbox.calls) == 1
    assert len(results) == 3 and all(isinstance(r, Refused) for r in results)
    assert intake.refusals == 3


async def test_hand_overs_within_the_window_are_stored_together() -> None:
    # At a few hundred pages a second each page used to be a commit of its own.
    outbox = SlowOutbox()
    outbox.go.set()
    intake = Intake(cast(OutboxStore, outbox), Metrics(), later_window=0.05)
    results: list[Stored | Refused] = []
    for name in ("a", "b", "c"):
        intake.store_later(_rows(name), results.append)
        await asyncio.sleep(0.005)  # pages a few ms apart
    await intake.drain()
    assert outbox.calls == [["a", "b", "c"]]
    assert len(results) == 3 and all(isinstance(r, Stored) for r in results)
