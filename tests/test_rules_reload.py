"""Rule files reloaded on SIGHUP, in `capi-gateway serve` as a real subprocess.

The site (tests.fakes.upstream) and the fake Graph API are subprocesses too. A changed rule
file takes effect at the next request after SIGHUP; a broken one is refused: the running
rules stay in force (all of them, not the half that parsed) and the log names the file, the
rule and what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import API_KEY, PIXEL, TOKEN, UA
from tests.fakes.processes import (
    Gateway,
    listening_url,
    spawn,
    start_fake,
    start_gateway,
    stop_at_exit,
    tail,
    wait_healthy,
)

ENV = {"CAPIGW_POLL_INTERVAL": "0.05", "CAPIGW_PAGEVIEW_HOLD": "0"}


def rule(name: str, event: str, path: str, source: str = "query") -> str:
    """A rule file: `event` for GET `path`, with a custom `via` from `source`."""
    return f"""
[[rule]]
name = "{name}"
event = "{event}"
method = "GET"
path = "{path}"
custom.via = {{ source = "{source}", key = "via", default = "direct" }}
"""


def rule_rows(buffer: Path) -> list[str]:
    """The `rule` column of the outbox's rule events, in order (read beside the gateway)."""
    with contextlib.closing(sqlite3.connect(buffer)) as conn:
        return [str(r) for (r,) in conn.execute("SELECT rule FROM events WHERE rule IS NOT NULL")]


async def until(check: Callable[[], bool], what: str, gw: Gateway, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{tail(gw.log)}")
        await asyncio.sleep(0.05)


async def test_sighup_reloads_rules_and_a_broken_file_keeps_the_running_ones(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.toml").write_text(rule("old", "Lead", "/echo/old"))
    buffer = tmp_path / "outbox.db"
    with stop_at_exit() as procs:
        site_log = tmp_path / "site.log"
        site = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], site_log)
        procs.append(site)
        site_url = listening_url(site, site_log, "the upstream", 20)
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        gw = start_gateway(
            buffer,
            fake.url,
            tmp_path / "gateway.log",
            pixel=PIXEL,
            token=TOKEN,
            api_key=API_KEY,
            env=ENV,
            args=["--upstream", site_url, "--rules", str(rules)],
        )
        procs.append(gw.proc)
        async with aiohttp.ClientSession(headers={"User-Agent": UA}) as session:
            await wait_healthy(gw, session)

            async def get(path: str) -> None:
                async with session.get(gw.url + path) as resp:
                    assert resp.status == 200
                    await resp.read()

            async def delivered() -> list[str]:
                events = await fake.get(session, "events")
                return sorted(str(e["event_name"]) for e in events)

            def reloads() -> int:
                return gw.log.read_text(errors="replace").count("Reloaded the configuration.")

            await get("/echo/old")
            await until(lambda: rule_rows(buffer) == ["old"], "the first rule's event", gw)

            # A new rule file: the next request is matched against it, not the old one.
            (rules / "site.toml").write_text(rule("new", "Contact", "/echo/new"))
            gw.proc.send_signal(signal.SIGHUP)
            await until(lambda: reloads() == 1, "the reload", gw)
            await get("/echo/old")
            await get("/echo/new?via=ad")
            await until(lambda: rule_rows(buffer) == ["old", "new"], "the new rule's event", gw)

            # A broken file beside a changed one: the whole reload is refused.
            (rules / "site.toml").write_text(rule("newer", "Schedule", "/echo/newer"))
            (rules / "broken.toml").write_text(rule("typo", "Lead", "/echo/typo", "qury"))
            gw.proc.send_signal(signal.SIGHUP)

            def refused() -> bool:
                return "Reload refused" in gw.log.read_text(errors="replace")

            await until(refused, "the refused reload in the log", gw)
            line = next(
                x for x in gw.log.read_text(errors="replace").splitlines() if "Reload refused" in x
            )
            assert str(rules / "broken.toml") in line
            assert "rule 'typo': custom.via: unknown source 'qury'" in line
            await get("/echo/newer")
            await get("/echo/typo")
            await get("/echo/new")
            await until(lambda: len(rule_rows(buffer)) >= 3, "the kept rule's event", gw)
            assert rule_rows(buffer) == ["old", "new", "new"]
            assert reloads() == 1
            deadline = time.monotonic() + 10
            while await delivered() != ["Contact", "Contact", "Lead"]:
                assert time.monotonic() < deadline, await delivered()
                await asyncio.sleep(0.05)
