"""Sites reloaded on SIGHUP, in `capi-gateway serve` as a real subprocess, under load.

A second site is added while clients keep asking the first one for pages: no request fails,
and the new host answers from its own upstream once the reload is logged.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from tests.conftest import API_KEY, PIXEL, TOKEN, UA
from tests.fakes.processes import (
    listening_url,
    spawn,
    start_fake,
    start_gateway,
    stop_at_exit,
    wait_healthy,
)
from tests.test_rules_reload import until


def site(name: str, host: str, upstream: str, pixel: str) -> str:
    return (
        f'[[sites]]\nname = "{name}"\nhosts = ["{host}"]\nupstream = "{upstream}"\n'
        f"pixel_id = [{pixel}]\n"
    )


async def test_sighup_adds_a_site_under_load_without_a_failed_request(tmp_path: Path) -> None:
    with stop_at_exit() as procs:
        upstreams = []
        for name in ("a", "b"):
            log = tmp_path / f"site-{name}.log"
            proc = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], log)
            procs.append(proc)
            upstreams.append(listening_url(proc, log, f"upstream {name}", 20))
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        config = tmp_path / "gateway.toml"
        config.write_text(site("alpha", "alpha.example", upstreams[0], PIXEL))
        gw = start_gateway(
            tmp_path / "outbox.db",
            fake.url,
            tmp_path / "gateway.log",
            pixel=PIXEL,
            token=TOKEN,
            api_key=API_KEY,
            env={"CAPIGW_PAGEVIEW_HOLD": "0"},
            args=["--config", str(config)],
        )
        procs.append(gw.proc)
        async with aiohttp.ClientSession(headers={"User-Agent": UA}) as session:
            await wait_healthy(gw, session)

            async def status(host: str) -> int:
                headers = {"Host": host, "Accept": "text/html"}
                async with session.get(gw.url + "/html", headers=headers) as resp:
                    await resp.read()
                    return resp.status

            assert await status("beta.example") == 421
            seen: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                for _ in range(2000):  # bounded; stopped once the new site answers
                    if stop.is_set():
                        return
                    seen.append(await status("alpha.example"))

            loaders = [asyncio.create_task(load()) for _ in range(4)]
            await until(lambda: len(seen) >= 20, "the first pages", gw)
            config.write_text(
                site("alpha", "alpha.example", upstreams[0], PIXEL)
                + site("beta", "beta.example", upstreams[1], "987654321098")
            )
            gw.proc.send_signal(signal.SIGHUP)

            def reloaded() -> bool:
                return "Reloaded the configuration." in gw.log.read_text(errors="replace")

            await until(reloaded, "the reload", gw)
            assert await status("beta.example") == 200
            before = len(seen)
            await until(lambda: len(seen) >= before + 20, "pages after the reload", gw)
            stop.set()
            await asyncio.gather(*loaders)
    assert seen and set(seen) == {200}, sorted(set(seen))


async def test_sighup_switches_between_one_upstream_and_sites_and_back(tmp_path: Path) -> None:
    """The first [[sites]] table and the removal of the last one apply on SIGHUP, under load."""
    with stop_at_exit() as procs:
        upstreams = []
        for name in ("a", "b"):
            log = tmp_path / f"site-{name}.log"
            proc = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], log)
            procs.append(proc)
            upstreams.append(listening_url(proc, log, f"upstream {name}", 20))
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        config = tmp_path / "gateway.toml"
        single = f'upstream = "{upstreams[0]}"\n'
        config.write_text(single)
        gw = start_gateway(
            tmp_path / "outbox.db",
            fake.url,
            tmp_path / "gateway.log",
            pixel=PIXEL,
            token=TOKEN,
            api_key=API_KEY,
            env={"CAPIGW_PAGEVIEW_HOLD": "0"},
            args=["--config", str(config)],
        )
        procs.append(gw.proc)
        async with aiohttp.ClientSession(headers={"User-Agent": UA}) as session:
            await wait_healthy(gw, session)

            async def get(host: str, path: str) -> int:
                headers = {"Host": host, "Accept": "text/html"}
                async with session.get(gw.url + path, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            async def seen_by(upstream: str) -> list[str]:
                async with session.get(upstream + "/_up/requests") as resp:
                    return [r["path"] for r in await resp.json()]

            async def reload(text: str, count: int) -> None:
                config.write_text(text)
                gw.proc.send_signal(signal.SIGHUP)

                def reloaded() -> bool:
                    log = gw.log.read_text(errors="replace")
                    return log.count("Reloaded the configuration.") >= count

                await until(reloaded, f"reload {count}", gw)

            assert await get("alpha.example", "/echo/one") == 200
            assert "/echo/one" in await seen_by(upstreams[0])
            seen: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                for _ in range(3000):  # bounded; stopped once both switches are done
                    if stop.is_set():
                        return
                    seen.append(await get("alpha.example", "/html"))

            loaders = [asyncio.create_task(load()) for _ in range(4)]
            await until(lambda: len(seen) >= 20, "the first pages", gw)

            await reload(single + site("alpha", "alpha.example", upstreams[1], PIXEL), 1)
            assert "Switched to [[sites]]" in gw.log.read_text(errors="replace")
            assert await get("alpha.example", "/echo/two") == 200
            assert "/echo/two" in await seen_by(upstreams[1])
            assert "/echo/two" not in await seen_by(upstreams[0])
            assert await get("other.example", "/echo/three") == 421
            async with session.get(gw.url + "/_capi/health") as resp:
                health = await resp.json()
            assert health["checks"]["upstream"]["sites"]["alpha"]["ok"] is True
            before = len(seen)
            await until(lambda: len(seen) >= before + 20, "pages with sites", gw)

            await reload(single, 2)
            assert "No [[sites]] any more" in gw.log.read_text(errors="replace")
            assert await get("other.example", "/echo/four") == 200
            assert "/echo/four" in await seen_by(upstreams[0])
            before = len(seen)
            await until(lambda: len(seen) >= before + 20, "pages without sites again", gw)
            stop.set()
            await asyncio.gather(*loaders)
            assert gw.proc.poll() is None
    assert seen and set(seen) == {200}, sorted(set(seen))
