"""Webhook mappings in (`[[webhook]]` tables), event drafts out of a provider's payload.

A hook (`{prefix}/hooks/<hook>`) may carry several mappings — e.g. one per Stripe event
type; each whose `when` conditions hold yields one event. Pure: no aiohttp, no SQL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.pipeline.eventid import render_event_id
from gateway.pipeline.extract import (
    Extractor,
    Facts,
    compile_extract,
    extract_required,
)
from gateway.pipeline.matchers import Cond, compile_conditions
from gateway.pipeline.normalize import ALIASES, HASHED_FIELDS, NormalizationError, hash_value
from gateway.pipeline.rulefile import (
    WEBHOOK_SOURCES,
    RuleError,
    SignatureSpec,
    WebhookModel,
    template_fields,
)
from gateway.pipeline.signatures import HmacScheme
from gateway.pipeline.values import dotted


@dataclass(frozen=True, slots=True)
class Verifier:
    """How one hook's requests are authenticated."""

    kind: str  # "stripe" | "hmac"
    secrets: tuple[str, ...]
    tolerance: float
    scheme: HmacScheme | None = None
    # Environment variables named by `env:` secrets that are not set (the hook is closed).
    missing: str = ""


@dataclass(frozen=True, slots=True)
class Webhook:
    """A compiled `[[webhook]]` mapping."""

    name: str
    hook: str
    event_name: str
    file: str
    when: tuple[Cond, ...]
    event_id: str | None
    delivery_id: str | None
    require: tuple[str, ...]
    action_source: str
    event_time: str | None
    event_source_url: str | None
    extractors: tuple[Extractor, ...]
    stitch: tuple[str, ...]
    use_stitched_event_id: bool
    verifier: Verifier
    hold: float | None = None

    def applies(self, payload: Any) -> bool:
        """True when every `when` condition holds for the payload."""
        return all(c.test(dotted(payload, c.name)) for c in self.when)

    def draft(self, facts: Facts, payload: Any, now: float | None = None) -> dict[str, Any] | None:
        """The event for a payload, None when a required value is missing."""
        found = extract_required(self.extractors, facts, self.require)
        if found is None:
            return None
        values = {**found["custom_data"], **found["user_data"]}
        event: dict[str, Any] = {
            "event_name": self.event_name,
            "action_source": self.action_source,
            "user_data": found["user_data"],
        }
        if found["custom_data"]:
            event["custom_data"] = found["custom_data"]
        delivery = _first(dotted(payload, self.delivery_id)) if self.delivery_id else None
        if self.event_id is not None:
            event["event_id"] = render_event_id(self.event_id, values, self.name)
        elif delivery is not None:
            # The provider's id for this delivery: a retried webhook is the same event.
            event["event_id"] = f"{self.name}-{delivery}"[:256]
        if self.event_time:
            stamp = _timestamp(_first(dotted(payload, self.event_time)))
            if stamp is not None:
                event["event_time"] = stamp
        if self.event_source_url:
            url = _first(dotted(payload, self.event_source_url))
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                event["event_source_url"] = url[:4096]
        return event

    def stitch_keys(self, event: Mapping[str, Any]) -> dict[str, str]:
        """The lookup keys the event carries, normalized like the page rules store them."""
        values = {**event.get("custom_data", {}), **event.get("user_data", {})}
        return stitch_values(self.stitch, values)


def stitch_values(names: Sequence[str], values: Mapping[str, Any]) -> dict[str, str]:
    """Key name → the value to store or look up; customer data as its SHA-256 hash.

    A page rule storing `email` and a webhook looking up `email` must produce the same
    key, whether the address came typed in a form or from a payment provider's payload.
    """
    out: dict[str, str] = {}
    for name in names:
        value = values.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value in (None, ""):
            continue
        canonical = ALIASES.get(name, name)
        if canonical in HASHED_FIELDS:
            try:
                hashed = hash_value(canonical, str(value))
            except NormalizationError:
                hashed = None
            if hashed:
                out[canonical] = hashed
        else:
            out[name] = str(value).strip()
    return out


def compile_webhooks(models: Sequence[tuple[WebhookModel, str]]) -> tuple[Webhook, ...]:
    """Compile mappings; one signature scheme per hook, secrets resolved from the env."""
    out: list[Webhook] = []
    schemes: dict[str, tuple[SignatureSpec, str]] = {}
    for model, where in models:

        def fail(message: str, model: WebhookModel = model, where: str = where) -> RuleError:
            return RuleError(f"{where}: webhook {model.name!r}: {message}")

        seen = schemes.get(model.hook)
        if seen is not None and seen[0] != model.signature:
            raise fail(
                f"signature: differs from webhook {seen[1]!r} on the same hook "
                f"{model.hook!r}; mappings of one hook share one signature table"
            )
        schemes.setdefault(model.hook, (model.signature, model.name))
        try:
            extractors = compile_extract(model.extract, model.custom, WEBHOOK_SOURCES)
            verifier = _verifier(model.signature)
            when = compile_conditions(model.when)
        except ValueError as exc:
            raise fail(str(exc)) from None
        targets = {ex.target for ex in extractors}
        for name in (*model.require, *model.stitch):
            if name not in targets:
                raise fail(f"{name!r} is not extracted by this webhook")
        if model.event_id is not None:
            for name in template_fields(model.event_id):
                if name not in targets:
                    raise fail(f"event_id: {{{name}}} is not extracted by this webhook")
                if ALIASES.get(name, name) in HASHED_FIELDS:
                    raise fail(f"event_id: {{{name}}} is customer data and would reach Meta")
        if model.event_id is None and model.delivery_id is None:
            raise fail(
                'give event_id (e.g. "purchase-{order_id}") or delivery_id (the payload\'s '
                'id, e.g. "id"): without either a retried webhook would count twice'
            )
        out.append(
            Webhook(
                name=model.name,
                hook=model.hook,
                event_name=model.event,
                file=where,
                when=when,
                event_id=model.event_id,
                delivery_id=model.delivery_id,
                require=tuple(model.require),
                action_source=model.action_source,
                event_time=model.event_time,
                event_source_url=model.event_source_url,
                extractors=tuple(extractors),
                stitch=tuple(model.stitch),
                use_stitched_event_id=model.use_stitched_event_id,
                verifier=verifier,
                hold=model.hold,
            )
        )
    return tuple(out)


def _verifier(spec: SignatureSpec) -> Verifier:
    if not spec.secrets:
        raise ValueError(
            'signature.secrets: give at least one secret ("env:NAME" reads it from the environment)'
        )
    found = [_secret(s) for s in spec.secrets]
    secrets = tuple(s for s in found if s is not None)
    missing = ", ".join(s[4:] for s, v in zip(spec.secrets, found, strict=True) if v is None)
    if not secrets:
        # Loaded but closed: deliveries get a 503 (providers retry) until the secret is set.
        return Verifier(spec.type, (), spec.tolerance, missing=missing)
    if spec.type == "stripe":
        return Verifier("stripe", secrets, spec.tolerance)
    if not spec.header:
        raise ValueError("signature.header: name the header that carries the signature")
    try:
        scheme = HmacScheme(
            header=spec.header,
            secrets=secrets,
            encoding=spec.encoding,
            prefix=spec.prefix,
            timestamp_header=spec.timestamp_header,
            tolerance=spec.tolerance,
            template=spec.template,
        )
    except ValueError as exc:
        raise ValueError(f"signature: {exc}") from None
    return Verifier("hmac", secrets, spec.tolerance, scheme)


def _secret(value: str) -> str | None:
    if value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    return value


def _first(values: list[Any]) -> Any:
    return values[0] if values else None


def _timestamp(value: Any) -> int | None:
    """Unix seconds from seconds, milliseconds or an ISO 8601 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # Payloads are the provider's: 1e400 (inf), NaN or a 300-digit int must not raise.
        if isinstance(value, int):
            if abs(value) > 10**15:
                return None
        elif not math.isfinite(value) or abs(value) > 1e15:
            return None
        seconds = value / 1000 if value > 1e11 else value
        return int(seconds)
    if isinstance(value, str):
        text = value.strip()
        # "²" is a digit to isdigit() but not to int(); 5,000 digits are too many for int().
        if text.isascii() and text.isdigit() and len(text) <= 16:
            return _timestamp(int(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return int(parsed.timestamp())
    return None
