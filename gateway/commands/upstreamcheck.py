"""The upstream site's side of a diagnosis: does it answer, and how did it do lately.

`doctor` asks the site itself (one `GET /`, no redirects followed), then, when a gateway is
running on `listen`, its `/status` for the recent share of 5xx/502/504 answers visitors got.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from gateway.commands.findings import Finding, Level
from gateway.settings import Settings, split_host_port

UPSTREAM_TIMEOUT = 5.0


async def check_upstream(settings: Settings) -> list[Finding]:
    """Reachability of `upstream`, and the running gateway's recent error rate for it."""
    if settings.upstream is None:
        return []
    timeout = UPSTREAM_TIMEOUT
    out: list[Finding] = []
    url = settings.upstream + "/"
    started = time.monotonic()
    async with aiohttp.ClientSession(trust_env=False) as session:
        try:
            async with session.get(
                url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                status = resp.status
        except TimeoutError:
            out.append(_down(settings, f"no answer within {timeout:g} s (visitors get 504)"))
        except (aiohttp.ClientError, OSError) as exc:
            out.append(_down(settings, f"{exc or type(exc).__name__} (visitors get 502)"))
        else:
            took = (time.monotonic() - started) * 1000
            level = Level.WARN if status >= 500 else Level.OK
            out.append(
                Finding(
                    "upstream",
                    level,
                    f"{settings.upstream} answers GET / with HTTP {status} in {took:.0f} ms",
                    "the site itself fails: look at its logs" if status >= 500 else None,
                )
            )
        out += await _recent(session, settings)
    return out


def _down(settings: Settings, why: str) -> Finding:
    return Finding(
        "upstream",
        Level.FAIL,
        f"cannot reach the upstream {settings.upstream}: {why}",
        "start the site, or point --upstream (upstream) at the address it listens on",
    )


async def _recent(session: aiohttp.ClientSession, settings: Settings) -> list[Finding]:
    host, port = split_host_port(settings.listen)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - the address the gateway listens on
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
    try:
        async with session.get(
            f"http://{shown}:{port}{settings.prefix}/status",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=3),
        ) as resp:
            body: dict[str, Any] = await resp.json() if resp.status == 200 else {}
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        body = {}
    health = body.get("upstream_health")
    if not isinstance(health, dict):
        return []
    recent = health.get("recent", {})
    total = int(recent.get("requests", 0))
    text = (
        f"the running gateway proxied {total} request(s) in the last "
        f"{health.get('window_seconds', 0):.0f} s: {recent.get('5xx', 0)} 5xx from the site, "
        f"{recent.get('unreachable', 0)} unreachable (502), {recent.get('timeout', 0)} timed "
        f"out (504)"
    )
    if health.get("ok", True):
        return [Finding("upstream", Level.OK, text)]
    return [
        Finding(
            "upstream",
            Level.FAIL,
            f"{text}: {health.get('detail', '')}",
            "check that the site is up and answers within upstream_read_timeout",
        )
    ]
