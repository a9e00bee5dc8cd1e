"""`serve --workers 2` as it runs in production: worker death, reload, stop, back-off.

The gateway and the fake Graph API run as subprocesses on 127.0.0.1; the workers are found
with psutil, the outbox file is read with sqlite3 and the gateway's JSON log lines (each
with the pid that wrote it) tell the workers apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import socket
import sqlite3
import statistics
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from gateway.workers import _MIN_LIFETIME
from tests.conftest import API_KEY, PIXEL, TOKEN, web_event
from tests.fakes.processes import (
    HOST,
    Fake,
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    queue_stats,
    serve_args,
    spawn,
    start_fake,
    start_gateway,
    stop_at_exit,
    tail,
    wait_healthy,
)

LEASE = 3.0
GATEWAY_ENV = {
    "CAPIGW_WORKERS": "2",
    "CAPIGW_LEASE": str(LEASE),
    # Shorter than the lease: a live worker's send never outlasts its lease.
    "CAPIGW_SEND_TIMEOUT": "1",
    "CAPIGW_POLL_INTERVAL": "0.05",
    "CAPIGW_BATCH_SIZE": "50",
    "CAPIGW_PIXEL_RATE": "1000",
    "CAPIGW_PIXEL_BURST": "1000",
    "CAPIGW_RETRY_BASE": "0.05",
    "CAPIGW_RETRY_CAP": "0.3",
    "CAPIGW_SHUTDOWN_GRACE": "1",
    "CAPIGW_LOG_FORMAT": "json",
}
serve = partial(start_gateway, pixel=PIXEL, token=TOKEN, api_key=API_KEY)


# -- helpers ---------------------------------------------------------------------------------


def records(log: Path) -> list[dict[str, Any]]:
    """The gateway's JSON log lines."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def said(log: Path, text: str) -> list[dict[str, Any]]:
    """Log records whose message contains `text`."""
    return [r for r in records(log) if text in r["message"]]


def workers(gw: Gateway) -> set[int]:
    """Pids of the gateway's live workers (none once the parent is gone)."""
    pids = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(gw.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
    return pids


async def eventually(check: Callable[[], Any], what: str, gw: Gateway, timeout: float) -> Any:
    """`check()` (sync or async) until truthy, polling every 50 ms for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{tail(gw.log)}")


async def two_workers(gw: Gateway, old_enough: bool = False) -> set[int]:
    """The two workers once both run (and, if asked, have outlived start-up)."""

    # Ages count from when this test first saw each pid, which is after the parent forked
    # it: psutil's create_time can be a second off (boot time is rounded), which let a
    # worker be killed while the parent still took it for one failing at start-up.
    first_seen: dict[int, float] = {}

    def check() -> set[int] | None:
        pids = workers(gw)
        now = time.monotonic()
        for pid in pids:
            first_seen.setdefault(pid, now)
        if len(pids) != 2:
            return None
        if old_enough and min(now - first_seen[p] for p in pids) < _MIN_LIFETIME + 0.3:
            return None
        return pids

    found: set[int] = await eventually(check, "two workers", gw, 10)
    return found


async def post(
    url: str, events: list[dict[str, Any]], *, session: aiohttp.ClientSession | None = None
) -> tuple[int, Any]:
    """POST events; a new connection each time, so SO_REUSEPORT spreads them over workers."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            connector = aiohttp.TCPConnector(force_close=True)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        async with session.post(f"{url}/_capi/events", json={"data": events}, headers=headers) as r:
            return r.status, await r.json()


def sigterm(gw: Gateway, limit: float) -> int:
    gw.proc.send_signal(signal.SIGTERM)
    try:
        return gw.proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit {limit} s after SIGTERM:\n{tail(gw.log)}") from None


async def delivered(fake: Fake, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """Requests the fake answered 200, each with its event ids."""
    out = []
    for r in await fake.get(session, "requests"):
        if r["status"] == 200:
            r["event_ids"] = [e["event_id"] for e in r["body"]["data"]]
            out.append(r)
    return out


# -- worker death under load -----------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_killed_worker_loses_nothing_its_leases_come_back_and_it_is_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = tmp_path / "outbox.db"
    env = {**GATEWAY_ENV, "CAPIGW_LOG_LEVEL": "debug"}
    with stop_at_exit() as procs, contextlib.ExitStack() as closing:
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            # A slow Meta keeps batches leased (inflight) long enough to be caught by the kill.
            await fake.control(session, {"latency": 0.25})
            gw = serve(buffer, fake.url, tmp_path / "gateway.log", env=env)
            procs.append(gw.proc)
            await wait_healthy(gw, session)
            original = await two_workers(gw)

            acked: set[str] = set()
            stop = asyncio.Event()

            async def client() -> None:
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as own:
                    for _ in range(2000):
                        if stop.is_set() or len(acked) >= 8000:
                            return
                        events = [web_event(event_id=uuid.uuid4().hex) for _ in range(5)]
                        try:
                            status, body = await post(gw.url, events, session=own)
                        except (aiohttp.ClientError, ValueError):
                            await asyncio.sleep(0.01)
                            continue  # cut by the kill: never acknowledged
                        if status == 202:
                            acked.update(body["event_ids"])
                        await asyncio.sleep(0.005)

            clients = [asyncio.create_task(client()) for _ in range(6)]
            await two_workers(gw, old_enough=True)

            # Kill a worker that holds leases at this very moment.
            db = sqlite3.connect(buffer, timeout=5)
            closing.callback(db.close)

            def leased() -> int | None:
                owners = db.execute(
                    "SELECT DISTINCT lease_owner FROM events WHERE state='inflight'"
                ).fetchall()
                # lease_owner is host:pid:nonce
                pids = {int(owner.split(":")[-2]) for (owner,) in owners}
                return next(iter(pids & original), None)

            victim: int = await eventually(leased, "a worker holding leases", gw, 5)
            killed_at = time.time()
            psutil.Process(victim).send_signal(signal.SIGKILL)
            orphans = dict(
                db.execute(
                    "SELECT event_id, lease_expires FROM events WHERE state='inflight' "
                    "AND lease_owner LIKE ?",
                    (f"%:{victim}:%",),
                ).fetchall()
            )
            await asyncio.sleep(1.0)  # the survivor and the replacement keep accepting
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 15)

            now = await eventually(
                lambda: (pids := workers(gw)) - original and len(pids) == 2 and pids,
                "a replacement worker",
                gw,
                5,
            )
            replacement = (now - original).pop()
            replacement_started = psutil.Process(replacement).create_time()
            assert not psutil.pid_exists(victim), "the dead worker was not reaped"

            async def all_delivered() -> bool:
                got = {e for r in await delivered(fake, session) for e in r["event_ids"]}
                return acked <= got

            await eventually(all_delivered, "every acknowledged event at Meta", gw, 15)
            await eventually(
                lambda: (
                    not queue_stats(buffer).get("inflight") and not queue_stats(buffer)["pending"]
                ),
                "an empty queue",
                gw,
                10,
            )
            requests = await delivered(fake, session)
            sent_at = dict(db.execute("SELECT event_id, sent_at FROM events WHERE state='sent'"))
            final = queue_stats(buffer)
            code = sigterm(gw, 10)

    log = gw.log
    assert code == 0, tail(log)
    assert len(acked) > 300, f"too little load: {len(acked)} acknowledged"
    accepted_by = Counter(r["pid"] for r in said(log, "from the events API"))
    assert set(accepted_by) >= original, f"both workers should take events: {accepted_by}"
    assert said(log, f"Worker {victim} died (killed by SIGKILL)"), tail(log)
    assert said(log, f"Started worker {replacement} in place"), tail(log)
    assert accepted_by[replacement] > 0, "the replacement accepted nothing"
    assert orphans, "the killed worker held no leases: nothing to prove"

    deliveries = Counter(e for r in requests for e in r["event_ids"])
    assert not acked - set(deliveries)
    # A duplicate can only be a row Meta accepted from the killed worker in the instant
    # before it could mark it sent: it was still leased to the dead worker.
    twice = {e for e, n in deliveries.items() if n > 1}
    assert twice <= set(orphans), f"sent twice by the survivors: {sorted(twice - set(orphans))}"
    # The dead worker's rows went out again only once they were free: taken back by its
    # replacement as it opened the buffer (the dead pid's leases), or once a lease ran out.
    assert said(log, "leased by stopped processes of this host"), tail(log)
    for r in requests:
        for e in r["event_ids"]:
            if e in orphans and r["received_at"] >= killed_at:
                free_at = min(orphans[e] - 0.01, replacement_started)
                assert r["received_at"] >= free_at, (e, r["received_at"], orphans[e])
    assert final["dead"] == 0 and final["blocked"] == 0, final
    assert final["sent"] == len(deliveries), (final, len(deliveries))

    # The window in which a crash causes a duplicate: Meta's 200 -> the row marked sent.
    answered = {e: r["answered_at"] for r in requests for e in r["event_ids"]}
    batches = {(answered[e], sent_at[e]) for e in sent_at if e in answered}
    window = sorted((marked - answer) * 1000 for answer, marked in batches)
    with capsys.disabled():
        print(
            f"\n[workers] {len(acked)} events acknowledged by 2 workers "
            f"(requests per pid: {dict(accepted_by)}); killed {victim} holding "
            f"{len(orphans)} leased rows; replacement {replacement}; {len(twice)} delivered "
            f"twice; Meta's 200 -> marked sent, {len(window)} batches: "
            f"p50 {statistics.median(window):.1f} ms, "
            f"p99 {window[int(len(window) * 0.99)]:.1f} ms, max {window[-1]:.1f} ms"
        )


# -- reload ----------------------------------------------------------------------------------


def write_config(path: Path, graph_url: str, token: str, code: str) -> None:
    path.write_text(
        f'pixel_id = ["{PIXEL}"]\naccess_token = "{token}"\ntest_event_code = "{code}"\n'
        f'graph_url = "{graph_url}"\nevents_api_keys = ["{API_KEY}"]\n'
    )


@pytest.mark.timeout(60)
async def test_sighup_reloads_every_worker_and_replacements_start_with_it(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    old, new = "EAAB-token-before-reload", "EAAB-token-after-reload"
    with stop_at_exit() as procs:
        fake = start_fake(tmp_path / "fake.log", token=old)
        procs.append(fake.proc)
        write_config(config, fake.url, old, "TEST_OLD")
        port = free_port()
        args = serve_args(port, tmp_path / "outbox.db", "--config", str(config))
        log = tmp_path / "gateway.log"
        proc = spawn([*gateway_cmd(), *args], log, env=clean_env(**GATEWAY_ENV))
        gw = Gateway(proc, f"http://{HOST}:{port}", log)
        procs.append(gw.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_healthy(gw, session)
            pids = await two_workers(gw, old_enough=True)

            async def round_trip(n: int) -> list[dict[str, Any]]:
                """Post n events one per connection; the requests that delivered them."""
                ids = set()
                for _ in range(n):
                    status, body = await post(gw.url, [web_event(event_id=uuid.uuid4().hex)])
                    assert status == 202, body
                    ids.update(body["event_ids"])

                async def arrived() -> list[dict[str, Any]]:
                    got = [r for r in await delivered(fake, session) if ids & set(r["event_ids"])]
                    return got if {e for r in got for e in r["event_ids"]} >= ids else []

                found: list[dict[str, Any]] = await eventually(arrived, "delivery", gw, 10)
                return found

            def used(requests: list[dict[str, Any]]) -> set[tuple[str, str]]:
                return {
                    (r["query"]["access_token"], r["body"]["test_event_code"]) for r in requests
                }

            assert used(await round_trip(4)) == {(old, "TEST_OLD")}

            # New token and test code in the file; Meta now accepts only the new token.
            write_config(config, fake.url, new, "TEST_NEW")
            await fake.control(session, {"token": new})
            gw.proc.send_signal(signal.SIGHUP)
            await eventually(
                lambda: {r["pid"] for r in said(log, "Reloaded the configuration")} >= pids,
                "both workers to reload",
                gw,
                10,
            )
            assert used(await round_trip(30)) == {(new, "TEST_NEW")}

            # A broken file: everyone keeps what runs, says why, and the parent stays up.
            config.write_text("test_event_code = \n")
            gw.proc.send_signal(signal.SIGHUP)
            refused = await eventually(
                lambda: (got := {r["pid"] for r in said(log, "Reload refused")}) >= pids and got,
                "both workers to refuse the reload",
                gw,
                10,
            )
            assert gw.proc.pid in refused, "the supervisor did not check the new file"
            assert workers(gw) == pids and gw.proc.poll() is None
            assert used(await round_trip(10)) == {(new, "TEST_NEW")}

            # A worker started now gets the last good configuration, not the one at start-up
            # and not the broken file.
            psutil.Process(min(pids)).send_signal(signal.SIGKILL)
            await eventually(lambda: len(workers(gw) - pids) == 1, "a replacement", gw, 5)
            await eventually(lambda: len(workers(gw)) == 2, "two workers", gw, 5)
            assert used(await round_trip(30)) == {(new, "TEST_NEW")}
            stats = await fake.get(session, "stats")
            assert stats["failed_requests"] == 0, stats
            assert sigterm(gw, 10) == 0, tail(log)


# -- signals while starting and stopping -----------------------------------------------------


def dry_gateway(tmp_path: Path, **env: str) -> Gateway:
    """`serve --workers 2 --dry-run` on a fresh buffer (no Meta needed)."""
    return serve(
        tmp_path / "outbox.db",
        f"http://{HOST}:9",
        tmp_path / "gateway.log",
        env={**GATEWAY_ENV, **env},
        args=["--dry-run"],
    )


@pytest.mark.timeout(60)
async def test_sighup_while_workers_start_and_sigterm_during_a_reload(tmp_path: Path) -> None:
    with stop_at_exit() as procs:
        gw = dry_gateway(tmp_path)
        procs.append(gw.proc)
        log = gw.log
        deadline = time.monotonic() + 10
        while not said(log, "Started 2 workers") and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        # Reload requests while the workers are still building their app: to the parent,
        # which passes them on, and straight to the workers.
        for _ in range(15):
            gw.proc.send_signal(signal.SIGHUP)
            for pid in workers(gw):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).send_signal(signal.SIGHUP)
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session)
        pids = await two_workers(gw)
        assert not said(log, " died (") and not said(log, "failed at start-up"), tail(log)
        await eventually(
            lambda: {r["pid"] for r in said(log, "Reloaded the configuration")} >= pids,
            "the held reload to reach both workers",
            gw,
            5,
        )
        assert workers(gw) == pids
        # A stop that lands in the middle of a reload.
        gw.proc.send_signal(signal.SIGHUP)
        gw.proc.send_signal(signal.SIGTERM)
        assert sigterm(gw, 8) == 0, tail(log)
    text = log.read_text()
    assert "Traceback" not in text and "Reload failed" not in text, tail(log)
    assert len(said(log, "Stopped.")) == 2, tail(log)


@pytest.mark.timeout(60)
async def test_a_worker_that_does_not_stop_is_killed_and_the_exit_code_says_so(
    tmp_path: Path,
) -> None:
    with stop_at_exit() as procs:
        gw = dry_gateway(tmp_path, CAPIGW_SHUTDOWN_GRACE="0.5")
        procs.append(gw.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session)
        stuck, *_ = sorted(await two_workers(gw))
        psutil.Process(stuck).suspend()  # SIGSTOP: it cannot act on SIGTERM
        began = time.monotonic()
        code = sigterm(gw, 12)
        took = time.monotonic() - began
    assert code == 128 + signal.SIGKILL, tail(gw.log)
    assert 5.0 <= took < 9, took  # grace 0.5 s + 5 s
    assert said(gw.log, f"Worker {stuck} did not stop in time"), tail(gw.log)
    assert not psutil.pid_exists(stuck)


async def test_a_busy_port_stops_the_gateway_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    # The parent checks the address before it creates the outbox or forks: one line, exit
    # 2, nothing left behind (it used to fork workers that each failed to bind).
    with socket.socket() as taken:  # no SO_REUSEPORT: the workers could not share it
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = serve_args(port, tmp_path / "outbox.db", "--dry-run", "--pixel-id", PIXEL)
        log = tmp_path / "gateway.log"
        proc = spawn([*gateway_cmd(), *args], log, env=clean_env(**GATEWAY_ENV))
        try:
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 2, tail(log)
    assert "cannot listen" in log.read_text(), tail(log)
    assert not said(log, "failed at start-up"), tail(log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.log"]


@pytest.mark.timeout(60)
async def test_replacements_that_keep_dying_back_off_until_the_cause_is_fixed(
    tmp_path: Path,
) -> None:
    with stop_at_exit() as procs:
        gw = dry_gateway(tmp_path)
        procs.append(gw.proc)
        log = gw.log
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session)
            pids = await two_workers(gw, old_enough=True)
            # A worker started now cannot open the outbox: the key file is garbage.
            key = tmp_path / "outbox.db.key"
            good = key.read_text()
            key.write_text("not a key\n")
            psutil.Process(min(pids)).send_signal(signal.SIGKILL)
            killed = time.monotonic()

            def replacements_died() -> int:
                return len(said(log, " died (")) - 1  # the first is the killed worker

            await eventually(lambda: replacements_died() >= 3, "three failed replacements", gw, 6)
            took = time.monotonic() - killed
            # Back-off: 0, 0.5 s and 1 s before the 1st, 2nd and 3rd replacement; a fork
            # loop would have made hundreds by now.
            assert took >= 1.4, took
            assert len(said(log, "in place of the one that died")) == 3, tail(log)
            assert said(log, "starting a replacement in 2.0 s"), tail(log)
            # The surviving worker serves meanwhile; the parent is up.
            async with session.get(f"{gw.url}/_capi/health") as resp:
                assert resp.status == 200
            assert gw.proc.poll() is None

            key.write_text(good)  # fixed: the next replacement (after 2 s) stays up
            await eventually(lambda: len(workers(gw)) == 2, "a lasting replacement", gw, 5)
            await asyncio.sleep(0.5)
            assert len(workers(gw)) == 2 and replacements_died() == 3, tail(log)
        assert sigterm(gw, 8) == 0, tail(log)
    assert "config error: key_file" in log.read_text()


async def test_workers_stop_by_themselves_when_the_parent_is_killed(tmp_path: Path) -> None:
    with stop_at_exit() as procs:
        gw = dry_gateway(tmp_path)
        procs.append(gw.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session)
        pids = await two_workers(gw)
        gw.proc.kill()
        gw.proc.wait(timeout=5)
        orphans = [psutil.Process(pid) for pid in pids]
        _, alive = psutil.wait_procs(orphans, timeout=8)
        for proc in alive:  # do not leave them behind whatever happens
            proc.kill()
    assert not alive, f"workers outlived their parent: {alive}\n{tail(gw.log)}"
    assert len(said(gw.log, "Stopped.")) == 2, tail(gw.log)
