"""Plain-language hints from match-key coverage: the weakest key of an event, and where to fix it.

The dashboard shows them next to its coverage table and `capi-gateway doctor` prints them.
A hint names the rule file that produces the event when there is one, the events API when
a backend sends it, and says "add a rule file" when no rules are configured. It never asks
for a mapping that exists: where the rule that makes the event maps the key already, the
value is what is missing; where only a rule for another event maps it, the hint says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.pipeline.extract import Extractor
from gateway.pipeline.normalize import ALIASES

# The match keys the dashboard tracks, in Meta's order of weight, with the words a site
# owner knows them by.
MATCH_KEYS: tuple[tuple[str, str], ...] = (
    ("em", "email"),
    ("ph", "phone"),
    ("external_id", "external_id"),
    ("fbp", "fbp"),
    ("fbc", "fbc"),
    ("client_ip_address", "client IP"),
    ("client_user_agent", "user agent"),
)
LABELS = dict(MATCH_KEYS)
# Below this share a key is worth a hint.
WEAK = 0.9
# fbc exists only for visitors who came from an ad click: a low share is normal, so it
# never gets a hint. Browsing events come before the visitor says who they are: they are
# not asked for customer keys.
_CUSTOMER_KEYS = ("em", "ph", "external_id")
_BROWSER_KEYS = ("fbp", "client_ip_address", "client_user_agent")
_BROWSING_EVENTS = frozenset(
    {
        "PageView",
        "ViewContent",
        "Search",
        "AddToCart",
        "AddToWishlist",
        "CustomizeProduct",
        "FindLocation",
        "InitiateCheckout",
    }
)
_BACKEND_SOURCES = frozenset({"api"})
_FORMS = {
    "Purchase": "checkout form",
    "AddPaymentInfo": "checkout form",
    "Lead": "lead form",
    "Contact": "contact form",
    "SubmitApplication": "application form",
    "CompleteRegistration": "sign-up form",
    "StartTrial": "sign-up form",
    "Subscribe": "sign-up form",
    "Schedule": "booking form",
}


class RuleLike(Protocol):
    """What the dashboard needs of a loaded rule (gateway.pipeline.rules.Rule has it)."""

    @property
    def name(self) -> str: ...
    @property
    def event_name(self) -> str: ...
    @property
    def trigger(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def extractors(self) -> Sequence[Extractor]: ...


@dataclass(frozen=True, slots=True)
class Hint:
    """The weakest match key of an event name and what to do about it."""

    event_name: str
    key: str
    share: float
    text: str

    def __str__(self) -> str:
        return self.text


def coverage_hint(
    event_name: str,
    shares: Mapping[str, float],
    sources: Mapping[str, int],
    rules: Sequence[RuleLike],
    *,
    rules_dir: Path | None,
    prefix: str = "/_capi",
    received: Mapping[str, float] | None = None,
) -> Hint | None:
    """A hint for the weakest key of `event_name` under WEAK, or None when all are fine.

    `shares`: match key -> share of events carrying it as sent (after event assembly and
    visitor profiles: a key they supply needs no mapping); `sources`: rows per source (the
    largest decides where the fix belongs); `rules`: the loaded rules (those producing this
    event say where the fix goes; the others, whether a field is mapped elsewhere);
    `received`: the shares as received, to say how much assembly and profiles added.
    """
    keys = hinted_keys(event_name)
    weak = [(shares.get(k, 0.0), i, k) for i, k in enumerate(keys) if shares.get(k, 0.0) < WEAK]
    if not weak:
        return None
    share, _, key = min(weak)
    source = max(sources.items(), key=lambda item: item[1])[0] if sources else ""
    fix = _fix(event_name, key, source, rules, rules_dir, prefix)
    got = received.get(key, share) if received is not None else share
    if got < share:
        # What is missing is the rest: the copies and the profile already bring this much.
        carry = (
            f"carry {LABELS[key]} in {_percent(share)} of cases as sent ({_percent(got)} as "
            "received; event assembly and visitor profiles add the rest), so the events "
            f"without it had no copy or profile that knew it: {fix}"
        )
    else:
        carry = f"carry {LABELS[key]} in {_percent(share)} of cases: {fix}"
    return Hint(event_name, key, share, f"{event_name} events {carry}")


def hinted_keys(event_name: str) -> tuple[str, ...]:
    """The keys an event of this name is expected to carry (fbc never is)."""
    if event_name in _BROWSING_EVENTS:
        return _BROWSER_KEYS
    return _CUSTOMER_KEYS + _BROWSER_KEYS


def _fix(
    event: str,
    key: str,
    source: str,
    rules: Sequence[RuleLike],
    rules_dir: Path | None,
    prefix: str,
) -> str:
    backend = source in _BACKEND_SOURCES
    if key in _CUSTOMER_KEYS:
        if backend:
            return f"send user_data.{key} with each {event} from your backend ({prefix}/events)"
        webhook = source == "webhook"
        what = _customer_field(event, key, webhook=webhook)
        makers = [r for r in rules if r.event_name == event]
        files = sorted({r.file for r in makers})
        # Webhook mappings (listed with the rules) read a payload, not a request.
        requests = [r for r in makers if r.trigger != "webhook"]
        if requests and not webhook:
            mapped = _mapped_fix(event, key, requests, [r for r in rules if r.event_name != event])
            if mapped is not None:
                return mapped
        if files:
            return f"{what} in {', '.join(files)}"
        if rules_dir is None:
            return f"add a rule file that produces {event} and {what} (set `rules` to its folder)"
        return f"add a rule for {event} to a file in {rules_dir}/ and {what}"
    if key == "fbp":
        if backend:
            return "forward the visitor's _fbp cookie as user_data.fbp from your backend"
        return (
            "the gateway sets _fbp on the pages it tags, for visitors who consent: check that "
            "pages are tagged (inject on, no CSP refusing px.js) and how many visitors consent"
        )
    if key == "client_ip_address":
        if backend:
            return (
                "send the visitor's IP address (not your server's) as "
                "user_data.client_ip_address from your backend"
            )
        return (
            "if a load balancer or CDN sits in front of the gateway, list it in trusted_proxies "
            "so the visitor's address is read from X-Forwarded-For"
        )
    if backend:
        return "send the visitor's User-Agent header as user_data.client_user_agent"
    return "these requests came without a User-Agent header (scripts or bots, most likely)"


def _mapped_fix(
    event: str, key: str, makers: Sequence[RuleLike], others: Sequence[RuleLike]
) -> str | None:
    """What is missing when some rule maps the key already; None when none does."""
    field = LABELS[key]
    mapping = [(r, _mapped(r)[key]) for r in makers if key in _mapped(r)]
    if mapping:
        rule, where = mapping[0]
        return (
            f"rule {_named(rule)} maps {field} from {where}; the {event} events without it "
            f"came from requests with no value there: check that they carry it under that "
            f"name, or map {field} from where they do"
        )
    files = {r.file for r in makers}
    # The makers' own files first: a form mapped next door is the likeliest mix-up.
    near = sorted((r.file not in files, r.event_name, r.name) for r in others if key in _mapped(r))
    if not near:
        return None
    shown = ", ".join(f"{event_name} (rule {name!r})" for _, event_name, name in near[:2])
    if len(near) > 2:
        shown += f" and {len(near) - 2} more"
    one = len(makers) == 1
    return (
        f"{'rule' if one else 'rules'} {' and '.join(_named(r) for r in makers)}, which "
        f"make{'s' if one else ''} them, map{'s' if one else ''} no {field} (it is mapped only "
        f"for {shown}): map {'an' if field[0] in 'aeiou' else 'a'} {field} "
        f"that the {event} request carries in {'that rule' if one else 'those rules'}"
    )


def _mapped(rule: RuleLike) -> dict[str, str]:
    """The match keys a rule fills, each with where its first source reads it."""
    out: dict[str, str] = {}
    for ex in rule.extractors:
        if ex.section == "user_data" and ex.picks:
            out.setdefault(ALIASES.get(ex.target, ex.target), _source(ex))
    return out


def _source(ex: Extractor) -> str:
    spec = ex.picks[0].spec
    words = _SOURCE_WORDS.get(spec.source, spec.source)
    return f"the {words} {spec.key!r}" if spec.key else f"the {words}"


_SOURCE_WORDS = {
    "form": "form field",
    "json": "JSON field",
    "query": "query parameter",
    "path": "path segment",
    "cookie": "cookie",
    "header": "request header",
    "response_header": "response header",
    "meta": "page's meta tag",
    "jsonld": "page's JSON-LD",
    "selector": "page element",
    "data": "element's data attribute",
    "field": "form field",
    "const": "constant",
}


def _named(rule: RuleLike) -> str:
    return f"{rule.name!r} ({rule.file})"


def _customer_field(event: str, key: str, *, webhook: bool) -> str:
    if key == "external_id":
        place = "the webhook payload's" if webhook else "your"
        return f"map {place} customer or account id to external_id"
    field = LABELS[key]
    if webhook:
        return f"map the {field} field of the webhook payload"
    return f"map the {_FORMS.get(event, 'form')}'s {field} field"


def _percent(share: float) -> str:
    if 0 < share < 0.01:
        return "under 1%"
    return f"{share:.0%}"
