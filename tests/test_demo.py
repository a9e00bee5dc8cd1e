"""The README's first command: `capi-gateway demo`, as a newcomer runs it (a subprocess).

It must serve the demo site tagged, fire the example rules and take a signed webhook with
the secrets it prints — offline, without credentials.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp

from gateway.demo import DEMO_WEBHOOK_SECRETS
from gateway.pipeline.normalize import hash_value
from gateway.pipeline.signatures import sign_stripe
from tests.edge.test_webhooks import body_of, stripe_event, stripe_headers
from tests.fakes.processes import (
    HOST,
    clean_env,
    free_port,
    gateway_cmd,
    run_cli,
    spawn,
    stop_at_exit,
    stop_process,
    tail,
)


async def test_demo_serves_the_shop_fires_example_rules_and_takes_a_signed_webhook(
    tmp_path: Path,
) -> None:
    port, buffer, log = free_port(), tmp_path / "demo.db", tmp_path / "demo.log"
    base = f"http://{HOST}:{port}"
    with stop_at_exit() as procs:
        proc = spawn(
            [*gateway_cmd(), "demo", "--listen", f"{HOST}:{port}", "--buffer", str(buffer)], log
        )
        procs.append(proc)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"{base}/_capi/health?live") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, tail(log)
                assert proc.poll() is None, tail(log)
                await asyncio.sleep(0.1)
            browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}
            async with session.get(f"{base}/product/tee-01", headers=browser) as resp:
                assert resp.status == 200
                assert "/_capi/px.js" in await resp.text()
            async with session.get(f"{base}/search?q=mug", headers=browser) as resp:
                assert resp.status == 200
            body = json.dumps(
                {
                    "id": "evt_demo_1",
                    "type": "checkout.session.completed",
                    "created": int(time.time()),
                    "data": {
                        "object": {
                            "payment_status": "paid",
                            "amount_total": 1990,
                            "currency": "eur",
                            "metadata": {"order_id": "A1"},
                            "customer_details": {"email": "ann@example.com"},
                        }
                    },
                }
            ).encode()
            secret = DEMO_WEBHOOK_SECRETS["STRIPE_WEBHOOK_SECRET"]
            signature = sign_stripe(body, secret, int(time.time()))
            async with session.post(
                f"{base}/_capi/hooks/stripe",
                data=body,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            assert answer["events"][0]["event_id"] == "purchase-A1"
        banner = log.read_text()
        assert "dashboard" in banner and secret in banner
        deadline = time.monotonic() + 15
        while True:
            listed = run_cli("queue", "list", "--buffer", str(buffer), "--json").stdout
            rows = [json.loads(line) for line in listed.splitlines() if line.strip()]
            rules = {(r["event_name"], r["rule"]) for r in rows}
            wanted = {
                ("ViewContent", "view-product"),
                ("Search", "search"),
                ("Purchase", "stripe-purchase"),
            }
            if wanted <= rules:
                purchase = next(r for r in rows if r["event_name"] == "Purchase")
                # Event assembly records where the event came from.
                assert purchase["sources"] == ["webhook:stripe-purchase"]
                break
            assert time.monotonic() < deadline, (rules, tail(log))
            time.sleep(0.2)
        assert stop_process(proc, grace=10) == 0
        assert "Traceback" not in log.read_text()


async def test_the_demo_checkout_thank_you_and_stripe_webhook_make_one_rich_purchase(
    tmp_path: Path,
) -> None:
    """The demo's own journey, as the banner tells it: what the customer typed at checkout,
    the webhook's amount and the browser's fbp reach the (dry-run) outbox in one Purchase."""
    port, buffer, log = free_port(), tmp_path / "demo.db", tmp_path / "demo.log"
    base = f"http://{HOST}:{port}"
    with stop_at_exit() as procs:
        proc = spawn(
            [*gateway_cmd(), "demo", "--listen", f"{HOST}:{port}", "--buffer", str(buffer)],
            log,
            # Long enough for the webhook to meet the thank-you page's Purchase.
            env=clean_env(CAPIGW_ASSEMBLY_HOLD="4"),
        )
        procs.append(proc)
        jar = aiohttp.CookieJar(unsafe=True)
        browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}
        async with aiohttp.ClientSession(cookie_jar=jar, headers=browser) as session:
            await _wait_live(session, base, proc, log)
            async with session.get(f"{base}/product/tee-01") as resp:
                assert resp.status == 200
            async with session.post(f"{base}/cart/add", data={"sku": "tee-01"}) as resp:
                assert resp.status == 200  # followed to the cart
            async with session.post(
                f"{base}/checkout",
                data={"email": "Ann@Example.com", "phone": "+49 170 1234567"},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 302, await resp.text()
                thanks = resp.headers["Location"]
            order = parse_qs(urlsplit(thanks).query)["order"][0]
            async with session.get(f"{base}{thanks}" if thanks.startswith("/") else thanks) as r:
                assert r.status == 200
            fbp = next(c.value for c in jar if c.key == "_fbp")
            payment = stripe_event(
                order,
                amount_total=2490,
                customer_details={"email": "ann@example.com", "phone": None, "name": "Ann"},
            )
            body = body_of(payment)
            secret = DEMO_WEBHOOK_SECRETS["STRIPE_WEBHOOK_SECRET"]
            # Sent as Stripe's servers send it: another client, no cookies.
            async with (
                aiohttp.ClientSession() as provider,
                provider.post(
                    f"{base}/_capi/hooks/stripe", data=body, headers=stripe_headers(body, secret)
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
        assert answer["events"][0]["event_id"] == f"purchase-{order}"
        assert answer["events"][0]["outcome"] == "merged"
        # The banner says how to see it, and how long events wait for their copies.
        told = _banner_line(log.read_text(), "assembly")
        assert "queue list" in told and "webhook" in told and "wait 4 s" in told
        deadline = time.monotonic() + 20
        while True:
            # --reveal: the clear fields (fbp) as they were sent, opened with the demo's key.
            listed = run_cli("queue", "list", "--buffer", str(buffer), "--json", "--reveal").stdout
            rows = [json.loads(line) for line in listed.splitlines() if line.strip()]
            purchases = [r for r in rows if r["event_name"] == "Purchase"]
            if purchases and purchases[0]["state"] == "sent-dry":
                break
            assert time.monotonic() < deadline, (purchases, tail(log))
            await asyncio.sleep(0.2)
        (purchase,) = purchases
        assert purchase["sources"] == ["page:purchase", "webhook:stripe-purchase"]
        sent = purchase["payload"]
        assert sent["user_data"]["em"] == hash_value("em", "ann@example.com")
        assert sent["user_data"]["ph"] == hash_value("ph", "+49 170 1234567")
        assert sent["user_data"]["fbp"] == fbp
        assert sent["custom_data"]["value"] == 24.9  # the webhook's, not the page's
        assert sent["action_source"] == "website"
        assert stop_process(proc, grace=10) == 0
        assert "Traceback" not in log.read_text()


async def _wait_live(
    session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with session.get(f"{base}/_capi/health?live") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, tail(log)
        assert proc.poll() is None, tail(log)
        await asyncio.sleep(0.1)


def _banner_line(text: str, label: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {label} ")]
    return line[len(label) + 2 :].strip()


async def test_the_banner_commands_run_as_printed_and_a_second_demo_fails_first(
    tmp_path: Path,
) -> None:
    import subprocess

    from tests.fakes.processes import ROOT, clean_env

    port, buffer, log = free_port(), tmp_path / "demo.db", tmp_path / "demo.log"
    base = f"http://{HOST}:{port}"
    cmd = [*gateway_cmd(), "demo", "--listen", f"{HOST}:{port}", "--buffer", str(buffer)]
    with stop_at_exit() as procs:
        procs.append(spawn(cmd, log))
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"{base}/_capi/health?live") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, tail(log)
                await asyncio.sleep(0.1)
            # The shop's own title once, and an icon request that is no error.
            async with session.get(base + "/", headers={"User-Agent": "Mozilla/5.0"}) as resp:
                page = await resp.text()
            assert "<title>Demo Shop</title>" in page and 'rel="icon"' in page
            async with session.get(base + "/favicon.ico") as resp:
                assert resp.status == 204

        banner = log.read_text()

        def sh(command: str) -> subprocess.CompletedProcess[str]:
            # In the directory the demo was started from, as a user pastes it.
            return subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        events = sh(_banner_line(banner, "events"))
        assert events.returncode == 0, events.stderr
        assert json.loads(events.stdout) == {
            "accepted": 1,
            "event_ids": ["order-1001"],
            "events": [{"event_id": "order-1001", "outcome": "new"}],
        }
        queue = sh(_banner_line(banner, "queue"))
        assert queue.returncode == 0, queue.stderr
        assert "order-1001" in queue.stdout
        page_cmd = _banner_line(banner, "page")
        assert "px.js" in sh(page_cmd).stdout
        # curl as it comes is a bot: the demo says so in a header.
        bare = sh(f"curl -si {base}/")
        assert "X-Capi-Skipped: bot" in bare.stdout
        assert "px.js" not in bare.stdout

        # A second demo on the same port: one clear line, no banner, no files left behind.
        second = tmp_path / "second"
        second.mkdir()
        other = subprocess.run(
            [*cmd[:-1], str(second / "demo.db")],
            cwd=second,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert other.returncode == 2, other.stdout + other.stderr
        assert "open" not in other.stdout
        assert f"cannot listen on {HOST}:{port}" in other.stderr
        assert "Traceback" not in other.stderr
        assert list(second.iterdir()) == []
