"""`capi-gateway send-test-event`: one PageView to each configured pixel, in test mode.

The event is built by the same pipeline as the events API (normalized, hashed), sent
straight to the Graph API (not through the outbox) with a test event code, and Meta's
answer is printed: `events_received` and `fbtrace_id`, or the error with its fix. It is
sent even under `dry_run`: it cannot reach production data without a test event code, and
the command refuses to run without one. Exit codes as for `doctor` (gateway.commands.findings).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.commands.findings import EXIT_OFFLINE, EXIT_OK, EXIT_PROBLEMS, mask
from gateway.commands.graphcheck import GRAPH_TIMEOUT, OFFLINE_FIX, describe, refusal_hint
from gateway.delivery.graph import GraphClient, Outcome, SendResult
from gateway.pipeline.events import Context, Prepared, Target, prepare
from gateway.settings import PARTNER_AGENT, ConfigError, PixelSettings, Settings

TEST_URL = "https://capi-gateway.test/send-test-event"
# A fixed external id, hashed like any other: Meta matches test events on it, and it names
# no one.
TEST_EXTERNAL_ID = "capi-gateway-send-test-event"


@dataclass(frozen=True, slots=True)
class Sent:
    """What Meta answered for one pixel."""

    pixel_id: str
    test_event_code: str
    event_id: str
    result: SendResult


def targets(settings: Settings, test_event_code: str | None) -> list[tuple[PixelSettings, str]]:
    """Each pixel to send to, with its test event code; ConfigError naming what is missing."""
    pixels = [p for p in settings.effective_pixels() if p.access_token or not settings.dry_run]
    if not pixels:
        raise ConfigError(
            "pixel_id: no pixel with an access token is configured; set META_PIXEL_ID and "
            "META_ACCESS_TOKEN, or pass --pixel-id and --access-token"
        )
    out = []
    for pixel in pixels:
        if not pixel.access_token:
            raise ConfigError(
                f"access_token: pixel {pixel.id} has no access token; set META_ACCESS_TOKEN "
                "or --access-token"
            )
        code = test_event_code or pixel.test_event_code
        if not code:
            raise ConfigError(
                "test_event_code: send-test-event only sends in test mode; pass "
                "--test-event-code CODE (Events Manager → your dataset → Test events shows it)"
            )
        out.append((pixel, code))
    return out


def build_event(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The PageView as sent: through the events pipeline, user_data hashed, then merged."""
    event = {
        "event_name": "PageView",
        "event_id": f"capi-gateway-test-{uuid.uuid4().hex}",
        "action_source": "website",
        "event_source_url": TEST_URL,
        "user_data": {
            "external_id": TEST_EXTERNAL_ID,
            "client_user_agent": f"{PARTNER_AGENT} (send-test-event)",
        },
    }
    context = Context(targets=[Target("0", None)], default_country=settings.default_country)
    prepared = prepare([event], context, now=now)
    # A fixed, valid event: a problem here is a bug, not something a user can fix.
    assert isinstance(prepared, Prepared), prepared
    row = prepared.rows[0]
    payload = dict(row.payload)
    payload["user_data"] = {**payload.get("user_data", {}), **row.clear}
    return payload


async def send_test_events(
    settings: Settings, test_event_code: str | None, *, graph_timeout: float = GRAPH_TIMEOUT
) -> list[Sent]:
    """Send one test PageView to each pixel; never raises for network or Meta errors."""
    chosen = targets(settings, test_event_code)
    async with aiohttp.ClientSession(trust_env=False) as session:
        client = GraphClient(
            session,
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            timeout=graph_timeout,
            partner_agent=PARTNER_AGENT,
        )

        async def one(pixel: PixelSettings, code: str) -> Sent:
            event = build_event(settings)
            assert pixel.access_token is not None
            result = await client.send(
                pixel.id,
                [event],
                access_token=pixel.access_token,
                test_event_code=code,
                app_secret=pixel.app_secret,
            )
            return Sent(pixel.id, code, event["event_id"], result)

        return list(await asyncio.gather(*(one(p, code) for p, code in chosen)))


def report(sent: Sent, graph_url: str) -> tuple[int, list[str]]:
    """The exit code this answer stands for, and the lines that explain it."""
    who = f"pixel {mask(sent.pixel_id)}"
    result = sent.result
    if result.status is None:
        return EXIT_OFFLINE, [
            f"offline: could not reach {graph_url} ({result.message})",
            f"  fix: {OFFLINE_FIX}; nothing was sent",
        ]
    if result.outcome is Outcome.SENT:
        lines = [
            f"{who}: Meta received it: events_received={result.events_received} "
            f"fbtrace_id={result.fbtrace_id}",
            f"  look for PageView {sent.event_id} under Test events (code "
            f"{sent.test_event_code}) in Events Manager",
        ]
        messages = (result.body or {}).get("messages") or []
        lines += [f"  Meta says: {message}" for message in messages]
        return EXIT_OK, lines
    lines = [f"{who}: Meta refused it: {describe(result)}"]
    fix = refusal_hint(result)
    if fix:
        lines.append(f"  fix: {fix}")
    return EXIT_PROBLEMS, lines


def run_send_test_event(settings: Settings, test_event_code: str | None) -> int:
    """Send, print Meta's answers, and return 0 (all received), 1 (refused) or 3 (offline)."""
    sent = asyncio.run(send_test_events(settings, test_event_code))
    codes = []
    for item in sent:
        code, lines = report(item, settings.graph_url)
        codes.append(code)
        print("\n".join(lines))
    if EXIT_PROBLEMS in codes:
        return EXIT_PROBLEMS
    if EXIT_OFFLINE in codes:
        return EXIT_OFFLINE
    return EXIT_OK
