"""Log hygiene: a whole run at debug level never writes a token or customer data.

The gateway runs as a subprocess with two workers in front of a site and of the fake Graph
API, at `--log-level debug` with JSON logs. It gets every kind of traffic that carries
secrets or personal data: events API batches with an email, a phone number and the
Meta cookies, a rejected API key and an invalid event, page views through the proxy with
the email in the query string and the cookies in the request, a /collect beacon with
user_data, failing deliveries (Meta's error texts hold nothing secret, so whatever secret
shows up in the log came from the gateway), admin requests, a reload, a broken reload and
a stop. Then everything the process wrote (stdout and stderr) is searched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from gateway.settings import Settings
from tests.conftest import PIXEL, UA
from tests.fakes.processes import (
    HOST,
    Fake,
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    listening_url,
    queue_stats,
    serve_args,
    spawn,
    start_fake,
    stop_at_exit,
    tail,
    wait_healthy,
)

# Realistic shapes, unique to this run, so that a hit can only come from this test.
RUN = secrets.token_hex(4)
TOKEN = "EAAB" + secrets.token_hex(40)
API_KEY = f"hygiene-api-key-{secrets.token_hex(12)}"
WRONG_KEY = f"wrong-api-key-{secrets.token_hex(12)}"
APP_SECRET = secrets.token_hex(16)
ADMIN_TOKEN = f"admin-{secrets.token_hex(16)}"
EMAIL = f"Hygiene.Tester+{RUN}@Example.ORG"
PHONE = f"+1 (650) 555-{int(RUN, 16) % 10000:04d}"
PHONE_DIGITS = re.sub(r"\D", "", PHONE)
IP = f"198.51.100.{int(RUN, 16) % 250 + 1}"
FBP = f"fb.1.{int(time.time() * 1000)}.{int(RUN, 16)}{secrets.randbelow(10**9):09d}"
FBCLID = f"IwAR{secrets.token_urlsafe(24)}"
FBC = f"fb.1.{int(time.time() * 1000)}.{FBCLID}"
EXTERNAL_ID = f"customer-{secrets.token_hex(6)}"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# What must never appear, by name.
FORBIDDEN = {
    "access token": TOKEN,
    "events API key": API_KEY,
    "refused API key": WRONG_KEY,
    "app secret": APP_SECRET,
    "admin token": ADMIN_TOKEN,
    "email": EMAIL,
    "email, lowercase": EMAIL.lower(),
    "email, URL-encoded": quote(EMAIL, safe=""),
    "email, hashed": sha256(EMAIL.lower()),
    "phone": PHONE,
    "phone, E.164 digits": PHONE_DIGITS,
    "phone, hashed": sha256(PHONE_DIGITS),
    "_fbp cookie": FBP,
    "_fbc cookie": FBC,
    "fbclid": FBCLID,
    "external_id": EXTERNAL_ID,
    "external_id, hashed": sha256(EXTERNAL_ID),
    "visitor IP": IP,
}


def config_text(graph_url: str, *, broken: bool = False) -> str:
    admin = f'admin_token = "{ADMIN_TOKEN}"\n' if "admin_token" in Settings.model_fields else ""
    # A broken file that holds the token: its error message must not quote it.
    token_line = f"access_token = {TOKEN}\n" if broken else f'access_token = "{TOKEN}"\n'
    return (
        f'pixel_id = ["{PIXEL}"]\n{token_line}app_secret = "{APP_SECRET}"\n'
        f'graph_url = "{graph_url}"\nevents_api_keys = ["{API_KEY}"]\n{admin}'
    )


def event(name: str, **user: Any) -> dict[str, Any]:
    return {
        "event_name": name,
        "event_id": uuid.uuid4().hex,
        "event_time": int(time.time()),
        "action_source": "website",
        "event_source_url": f"https://shop.example/thanks?email={quote(EMAIL)}",
        "user_data": {
            "email": EMAIL,
            "phone": PHONE,
            "fbp": FBP,
            "fbc": FBC,
            "ip": IP,
            "user_agent": UA,
            "external_id": EXTERNAL_ID,
            **user,
        },
        "custom_data": {"value": 12.5, "currency": "EUR"},
    }


async def traffic(gw: Gateway, fake: Fake, session: aiohttp.ClientSession) -> int:
    """Every kind of request that carries secrets; how many events it stored."""
    events_url = f"{gw.url}/_capi/events"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    expected = 0

    # Meta fails in every way the sender handles; none of its texts holds a secret.
    await fake.control(
        session,
        {
            "fail_next": {"n": 1, "status": 503},  # a load balancer's HTML page
            "hang_next": {"n": 1, "seconds": 3},  # beyond send_timeout: a timeout
        },
    )
    await fake.control(session, {"fail_next": {"n": 1, "status": 400, "code": 2}})
    await fake.control(session, {"fail_next": {"n": 2, "status": 400, "code": 100}})

    for name in ("Purchase", "Lead", "CompleteRegistration"):
        async with session.post(events_url, json={"data": [event(name)]}, headers=auth) as r:
            assert r.status == 202, await r.text()
        expected += 1
    async with session.post(
        events_url, json={"data": [event(name) for name in ("Contact", "Schedule")]}, headers=auth
    ) as r:
        assert r.status == 202, await r.text()
    expected += 2
    # Refused: a wrong key, and an event Meta would reject (its values echo nowhere).
    wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
    async with session.post(events_url, json={"data": [event("Lead")]}, headers=wrong) as r:
        assert r.status == 401
    bad = event("Lead", email=f"not an email {EMAIL} {PHONE}", phone=f"call {PHONE} {EMAIL}")
    bad["event_time"] = "yesterday " + EMAIL
    async with session.post(events_url, json={"data": [bad]}, headers=auth) as r:
        assert r.status == 400

    # Page views through the proxy: PII in the query string, Meta's cookies in the request.
    browser = {
        "User-Agent": UA,
        "Accept": "text/html",
        "X-Forwarded-For": IP,
        "Cookie": f"_fbp={FBP}; _fbc={FBC}",
    }
    query = f"email={quote(EMAIL)}&phone={quote(PHONE)}&fbclid={FBCLID}"
    token = ""
    for path in (f"/html?{query}", f"/html?enc=gzip&{query}", f"/echo?{query}"):
        async with session.get(gw.url + path, headers=browser) as r:
            assert r.status == 200
            text = (await r.read()).decode(errors="replace")
        found = re.search(r'data-token="([^"]+)"', text)
        if found:
            token = found.group(1)
            expected += 1  # the PageView
    assert token, "no tagged page"
    # A broken upstream body: logged with the path, never the query string.
    async with session.get(gw.url + f"/reset-mid-body?{query}", headers=browser) as r:
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await r.read()

    # A beacon from the page, adding customer fields the visitor typed.
    beacon = {
        "token": token,
        "url": f"{gw.url}/html?{query}",
        "referrer": f"https://www.google.com/search?q={quote(EMAIL)}",
        "events": [
            {
                "event_name": "Lead",
                "event_id": uuid.uuid4().hex,
                "event_time": int(time.time()),
                "user_data": {"email": EMAIL, "phone": PHONE},
            }
        ],
    }
    headers = {**browser, "Origin": gw.url, "Content-Type": "text/plain;charset=UTF-8"}
    async with session.post(
        f"{gw.url}/_capi/collect", data=json.dumps(beacon), headers=headers
    ) as r:
        assert r.status == 204, await r.text()
    expected += 1

    # The operator's endpoints, with the right token and a wrong one.
    for bearer in (ADMIN_TOKEN, WRONG_KEY):
        for endpoint in ("status", "metrics", "health"):
            async with session.get(
                f"{gw.url}/_capi/{endpoint}", headers={"Authorization": f"Bearer {bearer}"}
            ) as r:
                await r.read()
    return expected


@pytest.mark.timeout(60)
async def test_a_full_run_at_debug_level_logs_no_secret_and_no_customer_data(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.toml"
    log = tmp_path / "gateway.log"
    env = clean_env(
        CAPIGW_POLL_INTERVAL="0.05",
        CAPIGW_RETRY_BASE="0.05",
        CAPIGW_RETRY_CAP="0.2",
        CAPIGW_SEND_TIMEOUT="1",
        CAPIGW_SHUTDOWN_GRACE="1",
        CAPIGW_PAGEVIEW_HOLD="0",
        CAPIGW_UPSTREAM_READ_TIMEOUT="2",
    )
    with stop_at_exit() as procs:
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        site_log = tmp_path / "site.log"
        site = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], site_log)
        procs.append(site)
        upstream = listening_url(site, site_log, "the upstream", 20)
        config.write_text(config_text(fake.url))
        port = free_port()
        buffer = tmp_path / "outbox.db"
        args = serve_args(
            port,
            buffer,
            *("--config", str(config), "--upstream", upstream, "--workers", "2"),
            *("--log-level", "debug", "--log-format", "json"),
        )
        gw = Gateway(spawn([*gateway_cmd(), *args], log, env=env), f"http://{HOST}:{port}", log)
        procs.append(gw.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_healthy(gw, session)
            expected = await traffic(gw, fake, session)

            # Everything accepted is settled: delivered, or dead-lettered by Meta's refusals.
            deadline = time.monotonic() + 20
            states: dict[str, int] = {}
            while time.monotonic() < deadline:
                states = queue_stats(buffer)
                if sum(states.values()) >= expected and not states["pending"] + states["inflight"]:
                    break
                await asyncio.sleep(0.2)
            assert states.get("sent", 0) >= 1, f"{states}\n{tail(log)}"
            assert sum(states.values()) >= expected and not states["pending"], states
            stats = await fake.get(session, "stats")
            assert stats["failed_requests"] >= 4, stats  # the failures did happen

            # A reload, a broken reload (the token sits in the bad line), a stop.
            gw.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            config.write_text(config_text(fake.url, broken=True))
            gw.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            gw.proc.send_signal(signal.SIGTERM)
            try:
                code = gw.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"no exit after SIGTERM:\n{tail(log)}") from None
            assert code == 0, tail(log)

    text = log.read_text(errors="replace")
    assert "Reload refused" in text and "Stopped." in text, tail(log)
    assert '"level": "debug"' in text, "not a debug-level run"
    leaks = []
    lowered = text.lower()
    for what, value in FORBIDDEN.items():
        at = lowered.find(value.lower())
        if at >= 0:
            line = text[text.rfind("\n", 0, at) + 1 : text.find("\n", at)]
            leaks.append(f"{what} ({value}) in: {line[:400]}")
    assert not leaks, "secrets or customer data in the log:\n" + "\n".join(leaks)
