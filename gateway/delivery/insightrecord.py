"""One group commit's report facts and touchpoints, written inside the commit's transaction.

The order of the steps is shared by both stores; the SQL comes from the backend as a
`FactsSql` (`gateway.delivery.insights.SqliteFacts`, `gateway.delivery.postgres.insights.PgFacts`),
as the event assembly's does (`gateway.delivery.assembler.AssemblySql`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from gateway.delivery import insightfacts as facts_
from gateway.delivery import insightvisits as visits_
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.visitcache import Seen
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State


class FactsSql(Protocol):
    """A backend's statements for the facts of one group commit, on its transaction."""

    async def merge(self, changed: Sequence[tuple[Any, ...]]) -> None:
        """Set what merged copies changed on their events' facts (`facts_.MERGE_SQL`)."""
        ...

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        """Stitch-key links -> the profile key they lead to."""
        ...

    async def seen(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
        """Per (site, visitor): the last page view stored and the current visit's source."""
        ...

    async def insert_facts(self, values: Sequence[tuple[Any, ...]]) -> None:
        """Insert facts (`facts_.fact_values`)."""
        ...

    async def insert_touches(self, values: Sequence[tuple[Any, ...]]) -> None:
        """Insert touchpoints (`visits_.touch_values`)."""
        ...


# What the store knows of a visitor it has never seen.
_NO_VISITS = Seen(None, None)


async def record(
    sql: FactsSql,
    policy: InsightPolicy,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    new: set[int],
    now: float,
    states: Sequence[State | None] | None = None,
) -> None:
    """Write the facts of the events stored as new and the touchpoints their page views
    start; the visitors' states are staged in `policy.cache` (kept once committed)."""
    changed = facts_.merged(rows, outcomes, states) if states is not None else []
    if changed:
        await sql.merge(changed)
    found = facts_.facts(policy, rows, outcomes, new)
    if not found:
        return
    wanted = [k for f in found if f.visitor is None for k in f.links]
    if wanted:
        # Facts without an fbp: the visitor their stitch keys lead to (profiles on).
        leads = await sql.resolve(wanted, now=now)
        for f in found:
            if f.visitor is None:
                lead = next((leads[k] for k in f.links if k in leads), None)
                f.visitor = facts_.visitor_of(lead) if lead else None
    pages = visits_.page_views(policy, rows, new)
    settled, unknown, new_visitors = visits_.from_cache(policy, pages)
    # What the store knew before this batch: read before the batch's own facts go in.
    seen = await sql.seen(unknown) if unknown else {}
    # A visitor whose `_fbp` was minted for a view of this batch has no earlier view anywhere.
    # (Should its next page, on another worker or replica, commit first, both record a visit
    # start; a read would have kept the later page's only, unless this view had a campaign.)
    seen.update(dict.fromkeys(new_visitors, _NO_VISITS))
    await sql.insert_facts([facts_.fact_values(f) for f in found])
    touches, after = visits_.touches(policy, pages, seen)
    if touches:
        await sql.insert_touches([visits_.touch_values(t) for t in touches])
    policy.cache.stage({**settled, **after})
