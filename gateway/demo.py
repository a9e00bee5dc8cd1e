"""`capi-gateway demo`: the example shop on loopback with the gateway in front, dry run."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.app import serve
from gateway.demo_shop import shop_app
from gateway.settings import Settings

DEMO_API_KEY = "demo-key"
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


async def run_demo(make_settings: Callable[[str], Settings]) -> None:
    """Start the shop, then serve the gateway in front of it until SIGTERM/SIGINT."""
    runner = web.AppRunner(shop_app(), access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = make_settings(f"http://127.0.0.1:{port}")
    host, _, listen_port = settings.listen.rpartition(":")
    public = f"http://{host or '127.0.0.1'}:{listen_port}"
    print(
        f"Demo shop behind capi-gateway (dry run, nothing is sent to Meta):\n"
        f"  open      {public}/\n"
        f"  dashboard {public}{settings.prefix}/admin\n"
        f"  events    curl -X POST {public}{settings.prefix}/events "
        f"-H 'Authorization: Bearer {DEMO_API_KEY}' -d '{{\"data\": [...]}}'\n"
        f"  queue     capi-gateway queue list --buffer {settings.buffer}\n"
        f"  rules     {settings.rules or 'none (pass --rules DIR)'}\n"
        f"  webhooks  {public}{settings.prefix}/hooks/stripe|bookings|crm, signed with "
        f"{', '.join(f'{k}={v}' for k, v in DEMO_WEBHOOK_SECRETS.items())}\n"
        f"Stop with Ctrl-C.",
        flush=True,
    )
    try:
        await serve(settings)
    finally:
        await runner.cleanup()
