"""A document's body from the site to the visitor: what reads its chunks on the way (rules,
the catalog's product reader) and the rewritten page written out.

A tagged page's PageView is built and handed over only after the write that carried the
tag (for a page that came whole: after its one write), so neither sits in the visitor's
wait (issue 19).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.edge.catalog import CatalogTap
from gateway.edge.pages import PagePlan
from gateway.edge.pagetap import PageTap
from gateway.edge.passthrough import Answer


def both(
    first: Callable[[bytes], None], second: Callable[[bytes], None]
) -> Callable[[bytes], None]:
    """One reader of the chunks that feeds both."""

    def feed(piece: bytes) -> None:
        first(piece)
        second(piece)

    return feed


def raw_feed(tap: PageTap | None, products: CatalogTap | None) -> Callable[[bytes], None] | None:
    """What reads the origin's chunks when the page is not rewritten: rules, products, both."""
    if tap is None:
        return None if products is None else products.raw
    return tap.raw if products is None else both(tap.raw, products.raw)


async def stream_rewritten(upstream: Answer, response: web.StreamResponse, plan: PagePlan) -> None:
    """The site's body through the plan's rewriter to the visitor; the PageView after."""
    rewrite = plan.rewrite
    content = upstream.content
    try:
        while chunk := await content.readany():
            out = rewrite.feed(chunk)
            if content.at_eof():
                break  # the last chunk leaves with the tail and the end, in one write
            if out:
                await response.write(out)
            if rewrite.injected and not plan.submitted:
                plan.submit()  # after the write that carried the tag, not before
        else:
            out = b""
        tail = rewrite.finish()
        await response.write_eof(out + tail if tail else out)
    finally:
        # The page carries the event id: only now is the server twin worth storing, and
        # only after its last write is it off the visitor's wait (also if the visitor
        # left or the site's body broke off after the tag).
        if rewrite.injected and not plan.submitted:
            plan.submit()
