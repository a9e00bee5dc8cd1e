"""A worker the OOM killer (or an operator) kills in its first seconds is replaced: only a
worker that exits by itself at start-up says the configuration is bad."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from gateway.workers import _MIN_LIFETIME
from tests.fakes.processes import stop_at_exit, tail, wait_healthy
from tests.test_workers import dry_gateway, eventually, said, workers


@pytest.mark.timeout(60)
async def test_a_worker_killed_right_after_start_is_replaced(tmp_path: Path) -> None:
    with stop_at_exit() as procs:
        gw = dry_gateway(tmp_path)
        procs.append(gw.proc)
        pids = await eventually(
            lambda: workers(gw) if len(workers(gw)) == 2 else None, "two workers", gw, 10
        )
        victim = min(pids)
        assert time.time() - psutil.Process(victim).create_time() < _MIN_LIFETIME
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: len(workers(gw)) == 2 and victim not in workers(gw),
            "a replacement for the killed worker",
            gw,
            10,
        )
        assert gw.proc.poll() is None, tail(gw.log)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session)
        assert not said(gw.log, "failed at start-up"), tail(gw.log)
        assert said(gw.log, f"Worker {victim} died (killed by SIGKILL)"), tail(gw.log)
