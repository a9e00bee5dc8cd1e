"""Typed application state: what the app owns, looked up by key, never module globals."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.delivery.audiences_task import AudienceService
from gateway.delivery.catalogsync import CatalogSender
from gateway.delivery.sender import Sender
from gateway.delivery.store import CatalogStore, OutboxStore, StitchStore, StoreReader
from gateway.edge.intake import Intake
from gateway.edge.pages import PageViews
from gateway.edge.proxied_rules import ProxiedRules
from gateway.edge.proxy import Proxy
from gateway.edge.visitor import VisitorRules
from gateway.metrics import Metrics
from gateway.pipeline.events import Context, Target
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RuleSet
from gateway.settings import Settings


@dataclass(slots=True)
class Runtime:
    """The parts of the app's state that a reload (SIGHUP) replaces."""

    settings: Settings
    context: Context
    # Trusted proxies, bot patterns and consent, parsed once per settings.
    visitors: VisitorRules
    rules: RuleSet = field(default_factory=RuleSet)

    @classmethod
    def from_settings(
        cls, settings: Settings, rules: RuleSet | None = None, *, site: str | None = None
    ) -> Runtime:
        """Derive what requests need from validated settings; RuleError for a bad rule file.

        `rules` already loaded (by the supervisor of `--workers`) are used as they are;
        `site` names the `[[sites]]` site these settings are for.
        """
        targets = [Target(p.id, p.test_event_code) for p in settings.effective_pixels()]
        return cls(
            settings=settings,
            context=Context(
                targets=targets,
                default_country=settings.default_country,
                max_future_skew=settings.max_future_skew,
                site=site,
            ),
            visitors=VisitorRules.from_settings(settings),
            rules=rules if rules is not None else _load(settings),
        )


def _load(settings: Settings) -> RuleSet:
    return load_rules(settings.rules) if settings.rules is not None else RuleSet()


RUNTIME = web.AppKey("runtime", Runtime)
OUTBOX = web.AppKey("outbox", OutboxStore)
SENDER = web.AppKey("sender", Sender)
STARTED_AT = web.AppKey("started_at", float)
PROXY = web.AppKey("proxy", Proxy)
PAGES = web.AppKey("pages", PageViews)
METRICS = web.AppKey("metrics", Metrics)
BUFFER_READER = web.AppKey("buffer_reader", StoreReader)
PROXIED_RULES = web.AppKey("proxied_rules", ProxiedRules)
INTAKE = web.AppKey("intake", Intake)
STITCHES = web.AppKey("stitches", StitchStore)
AUDIENCES = web.AppKey("audiences", AudienceService)
CATALOG = web.AppKey("catalog", CatalogStore)
CATALOG_SENDER = web.AppKey("catalog_sender", CatalogSender)
