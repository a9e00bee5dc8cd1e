"""Meta's side of a diagnosis: does each pixel's token reach the Graph API, is the clock right.

Shared by `capi-gateway doctor` and `capi-gateway send-test-event`: a connection failure
is reported as "offline" (a network problem, exit 3), never as a configuration problem.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from types import SimpleNamespace

import aiohttp

from gateway.commands.findings import Finding, Level, mask
from gateway.delivery.graph import GraphClient, Outcome, SendResult
from gateway.settings import PARTNER_AGENT, PixelSettings, Settings

# Long enough for a slow network; a diagnosis is run by hand, not on the hot path.
GRAPH_TIMEOUT = 10.0
# Clock offsets (seconds) from Meta's `Date` header, which has 1 s resolution.
CLOCK_WARN = 5.0
CLOCK_FAIL = 60.0

OFFLINE_FIX = "check DNS, the firewall or an egress proxy for this host (and graph_url)"
REISSUE_HINT = (
    "The token is invalid, expired or revoked. In Events Manager open the dataset, "
    "Settings → Conversions API → Generate access token; put the new token in "
    "META_ACCESS_TOKEN (or access_token in the config file) and reload the gateway "
    "(kill -HUP, or restart). Events parked for this pixel are then sent."
)
PERMISSION_HINT = (
    "The token works but may not send events to this dataset. Give its system user the "
    "dataset (Business Settings → System users → Assign assets, 'Manage'), or generate the "
    "token from the dataset's own Conversions API settings."
)
UNKNOWN_PIXEL_HINT = (
    "No dataset with this id is visible to the token: check the pixel id (Events Manager → "
    "Data sources → the dataset's id) and that the token was generated for it."
)


async def check_graph(settings: Settings, *, graph_timeout: float = GRAPH_TIMEOUT) -> list[Finding]:
    """Check each pixel's token against the Graph API, and the clock against Meta's."""
    pixels = [p for p in settings.effective_pixels() if p.access_token]
    if not pixels:
        reason = "dry run without an access token" if settings.dry_run else "no access token"
        return [Finding("graph", Level.NOTE, f"not checked: {reason}")]
    dates: list[tuple[str, float]] = []

    async def on_end(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        date = params.response.headers.get("Date")
        if date:
            dates.append((date, time.time()))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace], trust_env=False) as session:
        client = GraphClient(
            session,
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            timeout=graph_timeout,
            partner_agent=PARTNER_AGENT,
        )
        results = await asyncio.gather(*(_check_token(client, p) for p in pixels))
    out: list[Finding] = []
    offline = [r for _, r in results if r.status is None]
    if offline and len(offline) == len(results):
        return [offline_finding(settings.graph_url, offline[0].message)]
    for pixel, result in results:
        out.append(token_finding(pixel, result, settings.graph_url))
    if dates:
        out.append(clock_finding(*dates[0]))
    return out


async def _check_token(
    client: GraphClient, pixel: PixelSettings
) -> tuple[PixelSettings, SendResult]:
    assert pixel.access_token is not None
    result = await client.check_token(
        pixel.id, access_token=pixel.access_token, app_secret=pixel.app_secret
    )
    return pixel, result


def offline_finding(graph_url: str, reason: str) -> Finding:
    """The Graph API did not answer at all: a network problem, not a configuration one."""
    return Finding(
        "graph",
        Level.OFFLINE,
        f"offline: could not reach {graph_url} ({reason})",
        f"{OFFLINE_FIX}; the token and the clock were not checked",
    )


def token_finding(pixel: PixelSettings, result: SendResult, graph_url: str) -> Finding:
    """What Meta's answer to the token check means, with the fix for a refusal."""
    who = f"pixel {mask(pixel.id)}"
    if result.status is None:
        return offline_finding(graph_url, result.message)
    if result.outcome is Outcome.SENT:
        return Finding("graph", Level.OK, f"{who}: the access token reaches it")
    detail = describe(result)
    if result.outcome in (Outcome.RETRY, Outcome.THROTTLED):
        return Finding(
            "graph",
            Level.WARN,
            f"{who}: the token could not be verified now: {detail}",
            "Meta is busy or failing; run doctor again in a few minutes",
        )
    fix = refusal_hint(result)
    if fix is None and result.outcome is Outcome.BLOCKED:
        fix = f"{graph_url} answered HTTP {result.status}, not the Graph API: check graph_url"
    return Finding("graph", Level.FAIL, f"{who}: Meta refused the token check: {detail}", fix)


def describe(result: SendResult) -> str:
    """Meta's message with its code and fbtrace_id, for people and support tickets."""
    parts = [result.message or f"HTTP {result.status}"]
    if result.code is not None:
        code = f"code {result.code}"
        if result.subcode is not None:
            code += f"/{result.subcode}"
        parts.append(code)
    if result.fbtrace_id:
        parts.append(f"fbtrace_id {result.fbtrace_id}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def refusal_hint(result: SendResult) -> str | None:
    """The plain-language fix for a refused token or unknown pixel, when there is one."""
    if result.code in (102, 190):
        return REISSUE_HINT
    if result.code == 10 or (result.code is not None and 200 <= result.code < 300):
        return PERMISSION_HINT
    if result.code == 100 and result.subcode == 33:
        return UNKNOWN_PIXEL_HINT
    return None


def clock_finding(date_header: str, local: float) -> Finding:
    """Compare the local clock with the `Date` of Meta's answer (received at `local`)."""
    try:
        server = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Finding("clock", Level.NOTE, f"not checked: unreadable Date header {date_header!r}")
    # Date is truncated to the second: its true time is half a second later on average.
    skew = local - (server + 0.5)
    direction = "ahead of" if skew > 0 else "behind"
    text = f"this host's clock is {abs(skew):.0f} s {direction} Meta's"
    if abs(skew) <= CLOCK_WARN:
        return Finding("clock", Level.OK, f"within {CLOCK_WARN:g} s of Meta's")
    fix = (
        "turn on time synchronisation (systemd-timesyncd, chrony or the host's NTP); "
        "event times come from this clock"
    )
    return Finding("clock", Level.FAIL if abs(skew) > CLOCK_FAIL else Level.WARN, text, fix)
