"""Typed application state: what the app owns, looked up by key, never module globals."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.delivery.outbox import Outbox
from gateway.delivery.sender import Sender
from gateway.edge.pages import PageViews
from gateway.edge.proxy import Proxy
from gateway.pipeline.events import Context, Target
from gateway.settings import Settings


@dataclass(slots=True)
class Runtime:
    """The parts of the app's state that a reload (SIGHUP) replaces."""

    settings: Settings
    context: Context

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Derive what requests need from validated settings."""
        targets = [Target(p.id, p.test_event_code) for p in settings.effective_pixels()]
        return cls(
            settings=settings,
            context=Context(
                targets=targets,
                default_country=settings.default_country,
                max_future_skew=settings.max_future_skew,
            ),
        )


RUNTIME = web.AppKey("runtime", Runtime)
OUTBOX = web.AppKey("outbox", Outbox)
SENDER = web.AppKey("sender", Sender)
STARTED_AT = web.AppKey("started_at", float)
PROXY = web.AppKey("proxy", Proxy)
PAGES = web.AppKey("pages", PageViews)
