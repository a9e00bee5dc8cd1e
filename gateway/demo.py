"""`capi-gateway demo`: the example shop on loopback with the gateway in front, dry run."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.app import serve
from gateway.demo_shop import shop_app
from gateway.settings import Settings

DEMO_API_KEY = "demo-key"
# The pixel of the demo shop's pages (a local stand-in of fbevents.js) and of the gateway.
DEMO_PIXEL_ID = "1234567890"
# A made-up catalog: the demo runs dry, so its catalog sync records and sends nothing.
DEMO_CATALOG_ID = "1000000000001"
# Secrets of the example webhooks in rules/ (demo only: set your own in production).
DEMO_WEBHOOK_SECRETS = {
    "STRIPE_WEBHOOK_SECRET": "whsec_demo",
    "BOOKING_WEBHOOK_SECRET": "demo-booking-secret",
    "CRM_WEBHOOK_SECRET": "demo-crm-secret",
}


def default_rules_dir() -> Path | None:
    """The example rules of a source checkout (`rules/` beside the package), if present."""
    candidate = Path(__file__).resolve().parent.parent / "rules"
    return candidate if (candidate / "shop.toml").is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_command() -> str:
    """How to run this `capi-gateway` as typed in the demo's directory.

    After the README's first command the venv is not activated: `capi-gateway` alone is not
    on PATH there, `.venv/bin/capi-gateway` is.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name != "capi-gateway":
        # `python -m gateway.cli demo`
        return f"{shlex.quote(sys.executable)} -m gateway.cli"
    found = shutil.which("capi-gateway")
    if found and Path(found).absolute() == argv0.absolute():
        return "capi-gateway"
    try:
        return str(argv0.absolute().relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(argv0.absolute()))


def example_event(public: str) -> str:
    """A complete Purchase for the events API, as the demo's curl line sends it."""
    return json.dumps(
        {
            "data": [
                {
                    "event_name": "Purchase",
                    "event_id": "order-1001",
                    "event_source_url": f"{public}/thank-you?order=1001",
                    "user_data": {
                        "email": "jane@example.com",
                        "ip": "203.0.113.7",
                        "user_agent": "Mozilla/5.0",
                    },
                    "custom_data": {"value": 49.90, "currency": "EUR"},
                }
            ]
        },
        separators=(",", ":"),
    )


def banner(settings: Settings, public: str) -> str:
    """What the demo prints: where to look and commands that run as printed."""
    cli = cli_command()
    buffer = shlex.quote(str(settings.buffer))
    return (
        f"Demo shop behind capi-gateway (dry run, nothing is sent to Meta):\n"
        f"  open      {public}/\n"
        f"  dashboard {public}{settings.prefix}/admin  (browse the shop, then see its "
        f"deduplication: the pages carry a local stand-in of Meta's pixel)\n"
        f"  events    curl -s -X POST {public}{settings.prefix}/events "
        f"-H 'Authorization: Bearer {DEMO_API_KEY}' -H 'Content-Type: application/json' "
        f"-d {shlex.quote(example_event(public))}\n"
        f"  queue     {cli} queue list --buffer {buffer}\n"
        f"  assembly  check out in the shop with an email and phone, then send Stripe's "
        f"webhook for that order (metadata.order_id): `queue list` shows one Purchase with "
        f"the email and phone typed, the webhook's amount and the browser's fbp (sources "
        f"page:purchase, webhook:stripe-purchase); the dashboard's match keys show the lift. "
        f"Events wait {_hold(settings)} for their copies first (CAPIGW_ASSEMBLY_HOLD)\n"
        f"  page      curl -s -A 'Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0' {public}/ "
        f"  # curl's own User-Agent is a bot's: no tag\n"
        f"  catalog   open a product page, then CAPIGW_CATALOG_ID={DEMO_CATALOG_ID} {cli} "
        f"catalog status --buffer {buffer}  "
        f"(or {public}{settings.prefix}/catalog): its products, read off the pages\n"
        f"  rules     {settings.rules or 'none (pass --rules DIR)'}\n"
        f"  webhooks  {public}{settings.prefix}/hooks/stripe|bookings|crm, signed with "
        f"{', '.join(f'{k}={v}' for k, v in DEMO_WEBHOOK_SECRETS.items())}\n"
        f"Stop with Ctrl-C."
    )


def _hold(settings: Settings) -> str:
    seconds = settings.assembly_hold
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


async def run_demo(make_settings: Callable[[str], Settings]) -> None:
    """Start the shop, then serve the gateway in front of it until SIGTERM/SIGINT."""
    runner = web.AppRunner(shop_app(DEMO_PIXEL_ID), access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = make_settings(f"http://127.0.0.1:{port}")
    host, _, listen_port = settings.listen.rpartition(":")
    public = f"http://{host or '127.0.0.1'}:{listen_port}"
    print(banner(settings, public), flush=True)
    try:
        await serve(settings)
    finally:
        await runner.cleanup()
