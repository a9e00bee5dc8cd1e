"""Settings and the store key in, the `InsightPolicy` the store records with out.

The channel rules of `[insights] channels` are validated here, at start-up, as the grouping's
own `ChannelRule` model: a bad rule is a config error naming the key.
"""

from __future__ import annotations

import dataclasses

from pydantic import ValidationError

from gateway.delivery.insightfacts import InsightPolicy
from gateway.pipeline.channels import ChannelRule, ChannelRules
from gateway.settings import ConfigError, Settings


def channel_rules(settings: Settings, where: str = "insights") -> ChannelRules | None:
    """The compiled `[insights] channels` of one settings object (None: the default ones)."""
    rules = []
    for index, raw in enumerate(settings.insights.channels):
        try:
            rules.append(ChannelRule.model_validate(raw))
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"{where}.channels[{index}]: {problem}; a rule names a `channel` and at least "
                "one of `source`, `medium`, `campaign` (a regular expression or a list)"
            ) from exc
    return ChannelRules(rules) if rules else None


def _per_site(
    settings: Settings,
) -> tuple[dict[str, frozenset[str]], dict[str, ChannelRules | None]]:
    hosts: dict[str, frozenset[str]] = {"": frozenset()}
    rules: dict[str, ChannelRules | None] = {"": channel_rules(settings)}
    for site in settings.site_list():
        hosts[site.name] = frozenset(h.lstrip("*.") for h in site.hosts)
        rules[site.name] = channel_rules(site.settings, f"sites.{site.name}.insights")
    return hosts, rules


def insight_policy(settings: Settings, key: bytes) -> InsightPolicy:
    """The policy of the gateway's store: visit timeout, retention, hosts and rules per site."""
    hosts, rules = _per_site(settings)
    return InsightPolicy.from_key(
        key,
        visit_timeout=settings.visit_timeout,
        retention=settings.touchpoint_retention,
        own_hosts=hosts,
        rules=rules,
    )


def reloaded_policy(current: InsightPolicy, settings: Settings) -> InsightPolicy:
    """`current` under reloaded settings (SIGHUP): visit timeout, retention, sites' hosts
    and channel rules anew; the visitor keys (the store's key does not change without a
    restart) and the visit cache kept, so that a reload starts no visit by itself."""
    hosts, rules = _per_site(settings)
    return dataclasses.replace(
        current,
        visit_timeout=settings.visit_timeout,
        retention=settings.touchpoint_retention,
        own_hosts=hosts,
        rules=rules,
    )


def check_channels(settings: Settings) -> None:
    """ConfigError naming the key when a `[insights] channels` rule (top level or a site's)
    is not a valid rule; run before serving, and by `capi-gateway check`."""
    channel_rules(settings)
    for site in settings.site_list():
        channel_rules(site.settings, f"sites.{site.name}.insights")
