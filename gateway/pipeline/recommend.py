"""Plain-language recommendations: match-key coverage, funnel and channel figures in, advice out.

Only what the data supports: a rule looks only at groups of at least `min_events` events (or
visitors, or conversions), and every recommendation carries the figure that triggered it.
Coverage may come per channel and, with channel "", over all channels: a finding on the
all-channel row stands for the same finding on its channel rows, which are then left out
(a channel row speaks only when the whole does not). The rules and their thresholds
(module constants):

- `email_coverage`: a conversion event (`EMAIL_EVENTS`) carries `em` in less than 60% of
  cases (`EMAIL_MIN`): capture the email where it is typed (a checkout rule) or send it from
  the backend.
- `fbc_missing`: events from Paid Social carry `fbc` in less than 50% (`FBC_MIN`): the ad's
  click id is lost between the ad and the gateway.
- `fbp_missing`: browser events (a `client_user_agent` on at least 90%, `BROWSER_UA_MIN`)
  carry `fbp` in less than 80% (`FBP_MIN`): the _fbp cookie does not reach the gateway.
- `funnel_drop`: fewer than 20% of a step's visitors reach the next step (a loss of more
  than 80%, `FUNNEL_DROP`): look at that step, or at the rule recording the next one.
- `funnel_inverted`: a step has more than 1.5 times the visitors of the step before it
  (`FUNNEL_INVERTED`): the earlier step is under-recorded.
- `catalog_mismatch`: less than 90% of an event's content ids are catalog ids
  (`CATALOG_MIN`): dynamic ads cannot use those events.
- `direct_share`: more than 50% of last-click conversions are Direct (`DIRECT_MAX`): tag
  email and ad links with utm parameters.
- `unassigned_share`: more than 10% of last-click conversions are Unassigned
  (`UNASSIGNED_MAX`): use utm_medium values the channel grouping knows.
- `no_conversions`: no conversion at all from at least 1,000 visitors (`SILENT_VISITORS`;
  at a shop's usual 1-3% that would be 10 to 30): check the conversion rule fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

MATCH_KEYS: tuple[str, ...] = (
    "em",
    "ph",
    "fn",
    "ln",
    "external_id",
    "fbc",
    "fbp",
    "client_ip_address",
    "client_user_agent",
)
# Events where the visitor has usually typed an email address by then.
EMAIL_EVENTS = frozenset(
    {
        "Purchase",
        "Lead",
        "CompleteRegistration",
        "InitiateCheckout",
        "AddPaymentInfo",
        "Subscribe",
        "StartTrial",
        "SubmitApplication",
        "Contact",
        "Schedule",
    }
)
EMAIL_MIN = 0.6
FBC_MIN = 0.5
FBP_MIN = 0.8
BROWSER_UA_MIN = 0.9
FUNNEL_DROP = 0.8
FUNNEL_INVERTED = 1.5
CATALOG_MIN = 0.9
DIRECT_MAX = 0.5
UNASSIGNED_MAX = 0.1
SILENT_VISITORS = 1000


@dataclass(frozen=True, slots=True)
class KeyCoverage:
    """Of `events` events named `event_name` from `channel`, the share carrying each match key."""

    event_name: str
    channel: str
    events: int
    keys: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class InsightFacts:
    """The figures recommendations are computed from."""

    coverage: tuple[KeyCoverage, ...]
    funnel: tuple[tuple[str, int], ...]
    conversions_by_channel: Mapping[str, float]
    visitors: int
    content_ids_in_catalog: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One piece of advice and the figure that triggered it."""

    kind: str
    text: str
    figure: str


def _pct(share: float) -> str:
    return f"{share:.0%}"


def _from(channel: str) -> str:
    return f" from {channel}" if channel else ""


def _coverage(facts: InsightFacts, min_events: int) -> list[Recommendation]:
    """Per row; a finding on an event's all-channel row (channel "") stands for its channel
    rows: those are kept only for findings the event as a whole does not have."""
    found = [(cov, rec) for cov in facts.coverage for rec in _coverage_row(cov, min_events)]
    overall = {(cov.event_name, rec.kind) for cov, rec in found if not cov.channel}
    return [
        rec for cov, rec in found if not cov.channel or (cov.event_name, rec.kind) not in overall
    ]


def _coverage_row(cov: KeyCoverage, min_events: int) -> list[Recommendation]:
    out: list[Recommendation] = []
    if cov.events < min_events:
        return out
    keys = cov.keys
    em = keys.get("em", 0.0)
    label = f"{cov.event_name} events{_from(cov.channel)}"
    if cov.event_name in EMAIL_EVENTS and em < EMAIL_MIN:
        # The contrast that says "these buyers are known, just not by email": the ad
        # click (fbc) first, else the best other identifier.
        best = (
            ("fbc", keys.get("fbc", 0.0))
            if keys.get("fbc", 0.0) > em
            else max(
                ((k, keys.get(k, 0.0)) for k in ("external_id", "fbp", "ph")),
                key=lambda item: item[1],
            )
        )
        contrast = (
            f"carry {best[0]} in {_pct(best[1])} of cases but email in {_pct(em)}"
            if best[1] > em
            else f"carry email in only {_pct(em)} of cases"
        )
        out.append(
            Recommendation(
                kind="email_coverage",
                text=(
                    f"{label} {contrast}: add a rule that reads the email where it is typed "
                    "(e.g. the checkout form), or send it from the backend."
                ),
                figure=f"em on {_pct(em)} of {cov.events} {label}",
            )
        )
    fbc = keys.get("fbc", 0.0)
    if cov.channel == "Paid Social" and fbc < FBC_MIN:
        out.append(
            Recommendation(
                kind="fbc_missing",
                text=(
                    f"{label} carry fbc in only {_pct(fbc)} of cases: the fbclid of the ad "
                    "click is lost before the gateway sees it (a redirect that drops the "
                    "query string, or a landing page outside the gateway)."
                ),
                figure=f"fbc on {_pct(fbc)} of {cov.events} {label}",
            )
        )
    fbp = keys.get("fbp", 0.0)
    if keys.get("client_user_agent", 0.0) >= BROWSER_UA_MIN and fbp < FBP_MIN:
        out.append(
            Recommendation(
                kind="fbp_missing",
                text=(
                    f"{label} come from browsers but carry fbp in only {_pct(fbp)} of cases: "
                    "check that the _fbp cookie is set on the site's domain and that the "
                    "consent banner passes consent to the gateway."
                ),
                figure=f"fbp on {_pct(fbp)} of {cov.events} {label}",
            )
        )
    return out


def _funnel(facts: InsightFacts, min_events: int) -> list[Recommendation]:
    out: list[Recommendation] = []
    steps = facts.funnel
    for (name, before), (next_name, after) in pairwise(steps):
        if before >= min_events and after < before * (1 - FUNNEL_DROP):
            kept = after / before
            out.append(
                Recommendation(
                    kind="funnel_drop",
                    text=(
                        f"Only {_pct(kept)} of the visitors with {name} go on to {next_name}: "
                        f"look at that step of the site, or check that the rule recording "
                        f"{next_name} fires."
                    ),
                    figure=f"{before} visitors with {name}, {after} with {next_name}",
                )
            )
        elif after >= min_events and after > before * FUNNEL_INVERTED:
            out.append(
                Recommendation(
                    kind="funnel_inverted",
                    text=(
                        f"More visitors reach {next_name} than {name}: {name} is not recorded "
                        "for every visitor; check its rule."
                    ),
                    figure=f"{before} visitors with {name}, {after} with {next_name}",
                )
            )
    return out


def _catalog(facts: InsightFacts, min_events: int) -> list[Recommendation]:
    if facts.content_ids_in_catalog is None:
        return []
    # An event's all-channel row (channel "") when there is one, else its rows added up.
    events: dict[str, int] = {}
    for cov in facts.coverage:
        if cov.channel:
            events[cov.event_name] = events.get(cov.event_name, 0) + cov.events
    for cov in facts.coverage:
        if not cov.channel:
            events[cov.event_name] = cov.events
    out: list[Recommendation] = []
    for name, share in sorted(facts.content_ids_in_catalog.items()):
        count = events.get(name, 0)
        if count >= min_events and share < CATALOG_MIN:
            out.append(
                Recommendation(
                    kind="catalog_mismatch",
                    text=(
                        f"The content ids of {_pct(1 - share)} of {name} events are not ids in "
                        "the catalog: Meta cannot tie them to products for dynamic ads; make "
                        "the rule's content_ids use the catalog's item id."
                    ),
                    figure=f"{_pct(share)} of {count} {name} events with catalog content ids",
                )
            )
    return out


def _channels(facts: InsightFacts, min_events: int) -> list[Recommendation]:
    total = sum(facts.conversions_by_channel.values())
    if total <= 0 and facts.visitors >= max(SILENT_VISITORS, min_events):
        return [
            Recommendation(
                kind="no_conversions",
                text=(
                    f"No conversion was recorded from {facts.visitors} visitors: check that the "
                    "rule or webhook that records the conversion (e.g. Purchase) fires, with "
                    "`capi-gateway rules test` on the thank-you page."
                ),
                figure=f"0 conversions from {facts.visitors} visitors",
            )
        ]
    if total < min_events or total <= 0:
        return []
    out: list[Recommendation] = []
    direct = facts.conversions_by_channel.get("Direct", 0.0) / total
    if direct > DIRECT_MAX:
        out.append(
            Recommendation(
                kind="direct_share",
                text=(
                    f"{_pct(direct)} of conversions come from visits with no known source "
                    "(Direct): tag the links in emails, ads and posts with utm parameters so "
                    "attribution can see them."
                ),
                figure=f"{_pct(direct)} of {total:.0f} conversions Direct (last click)",
            )
        )
    unassigned = facts.conversions_by_channel.get("Unassigned", 0.0) / total
    if unassigned > UNASSIGNED_MAX:
        out.append(
            Recommendation(
                kind="unassigned_share",
                text=(
                    f"{_pct(unassigned)} of conversions come from visits in no channel "
                    "(Unassigned): their utm_medium is not one the channel grouping knows "
                    "(use cpc, paid, email, social, referral, affiliate …) or add a channel "
                    "override."
                ),
                figure=f"{_pct(unassigned)} of {total:.0f} conversions Unassigned (last click)",
            )
        )
    return out


def recommend(facts: InsightFacts, *, min_events: int = 20) -> list[Recommendation]:
    """The recommendations the figures support, each with its figure (rules in the docstring)."""
    return [
        *_coverage(facts, min_events),
        *_funnel(facts, min_events),
        *_catalog(facts, min_events),
        *_channels(facts, min_events),
    ]
