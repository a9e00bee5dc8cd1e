"""A down upstream is said by `/health` (readiness), `/status` and `doctor` (subprocess)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp

from gateway.edge.upstream_health import UpstreamHealth
from tests.fakes.processes import (
    HOST,
    clean_env,
    free_port,
    gateway_cmd,
    serve_args,
    spawn,
    stop_at_exit,
    tail,
)


async def _wait_live(session: aiohttp.ClientSession, base: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with session.get(f"{base}/_capi/health?live") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.1)


async def test_a_down_upstream_is_reported_by_health_status_and_doctor(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    base, log = f"http://{HOST}:{port}", tmp_path / "serve.log"
    args = serve_args(
        port, tmp_path / "outbox.db", "--dry-run", "--upstream", f"http://{HOST}:{dead}"
    )
    with stop_at_exit() as procs:
        procs.append(spawn([*gateway_cmd(), *args], log))
        async with aiohttp.ClientSession() as session:
            await _wait_live(session, base, log)
            for _ in range(5):
                async with session.get(f"{base}/shop") as resp:
                    assert resp.status == 502
            async with session.get(f"{base}/_capi/health") as resp:
                assert resp.status == 503
                health = await resp.json()
            assert health["live"] is True and health["ready"] is False
            upstream = health["checks"]["upstream"]
            assert upstream["ok"] is False and upstream["reachable"] is False
            assert upstream["recent"]["unreachable"] == 5
            assert str(dead) not in json.dumps(health)  # public: no address
            async with session.get(f"{base}/_capi/status") as resp:
                status = await resp.json()
            assert status["upstream_health"]["error_rate"] == 1.0
            assert any("unreachable" in w for w in status["warnings"])
        result = subprocess.run(
            [*gateway_cmd(), "doctor", *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"cannot reach the upstream http://{HOST}:{dead}" in result.stdout
        assert "5 unreachable (502)" in result.stdout


async def test_readiness_follows_the_recent_error_rate() -> None:
    health = UpstreamHealth("http://127.0.0.1:9")
    now = time.time()
    for _ in range(4):
        health.record("ok", status=200, now=now)
    for _ in range(4):
        health.record("timeout", status=504, now=now)
    assert health.recent(now) == {"ok": 4, "5xx": 0, "unreachable": 0, "timeout": 4}
    health.record("5xx", status=500, now=now)
    assert health.recent(now + 61) == {"ok": 0, "5xx": 0, "unreachable": 0, "timeout": 0}
    assert health.totals["timeout"] == 4 and health.totals["5xx"] == 1
