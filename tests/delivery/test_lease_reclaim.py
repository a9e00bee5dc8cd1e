"""A gateway (on either store) restarted after SIGKILL takes back, at open, the leases its
dead processes on this host held — instead of waiting out the whole lease before resending them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.delivery.stores import Opener, count_rows
from tests.delivery.test_outbox import event


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


async def test_leases_of_dead_processes_of_this_host_come_back_at_open(
    open_store: Opener,
) -> None:
    host = socket.gethostname()
    box = await open_store(group_commit_ms=5)
    await box.add([event(f"e{i}") for i in range(4)])
    await box.claim(f"{host}:{dead_pid()}:deadbeef", limit=1, lease=60)
    await box.claim(f"{host}:{os.getppid()}:a11ve000", limit=1, lease=60)  # still running
    await box.claim(f"other-host:{dead_pid()}:deadbeef", limit=1, lease=60)  # not ours to judge
    assert await count_rows(box, "state='inflight'") == 3
    await box.close()

    box = await open_store(group_commit_ms=5)
    assert await count_rows(box, "state='inflight'") == 2
    alive = f"state='inflight' AND lease_owner LIKE '{host}:{os.getppid()}:%'"
    assert await count_rows(box, alive) == 1
    assert await count_rows(box, "state='inflight' AND lease_owner LIKE 'other-host:%'") == 1
    # The taken-back row is due again now, not after its 60 s lease.
    rows = await box.claim("next", limit=10, lease=60)
    assert len(rows) == 2  # the reclaimed one and the never-claimed one
