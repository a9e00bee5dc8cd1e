"""A gateway restarted after SIGKILL takes back, at open, the leases its dead processes on
this host held — instead of waiting out the whole lease before resending them."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.delivery.outbox import Outbox
from gateway.delivery.seal import Sealer
from tests.delivery.test_outbox import KEY, event


def count(path: Path, where: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}").fetchone()[0])


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


async def test_leases_of_dead_processes_of_this_host_come_back_at_open(tmp_path: Path) -> None:
    host = socket.gethostname()
    path = tmp_path / "o.db"
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=5)
    await box.add([event(f"e{i}") for i in range(4)])
    await box.claim(f"{host}:{dead_pid()}:deadbeef", limit=1, lease=60)
    await box.claim(f"{host}:{os.getppid()}:a11ve000", limit=1, lease=60)  # still running
    await box.claim(f"other-host:{dead_pid()}:deadbeef", limit=1, lease=60)  # not ours to judge
    await box.close()
    assert count(path, "state='inflight'") == 3

    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=5)
    try:
        assert count(path, "state='inflight'") == 2
        assert count(path, f"state='inflight' AND lease_owner LIKE '{host}:{os.getppid()}:%'") == 1
        assert count(path, "state='inflight' AND lease_owner LIKE 'other-host:%'") == 1
        # The taken-back row is due again now, not after its 60 s lease.
        rows = await box.claim("next", limit=10, lease=60)
        assert len(rows) == 2  # the reclaimed one and the never-claimed one
    finally:
        await box.close()
