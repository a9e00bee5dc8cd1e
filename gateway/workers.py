"""`--workers N`: N forked processes sharing the listen socket (SO_REUSEPORT) and the buffer.

Each worker is a whole gateway: it accepts requests and runs its own sender. Row leases
in the shared SQLite file keep them from sending an event twice, and a worker that dies
is replaced; its leases expire and its claimed rows are sent by the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

from gateway.delivery.schema import connect
from gateway.delivery.seal import load_key
from gateway.settings import Settings

log = logging.getLogger("gateway.workers")

# A worker that dies this soon after starting is failing at start-up (bad port, bad
# buffer): replacing it in a loop would only spin.
_MIN_LIFETIME = 2.0


async def prepare_buffer(settings: Settings) -> None:
    """Create the outbox key and schema in the parent, before any worker races for them."""
    load_key(settings)
    conn = await connect(settings.buffer)
    await conn.close()


def run_workers(count: int, work: Callable[[], int]) -> int:
    """Fork `count` workers running `work`, replace dead ones, forward signals."""
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = work()
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for _ in range(count):
        spawn()
    log.info("Started %d workers.", count)
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            exit_code = max(exit_code, code if code > 0 else 0)
            continue
        if time.monotonic() - started < _MIN_LIFETIME:
            log.error("Worker %d failed at start-up (exit %d); stopping the others.", pid, code)
            stopping = True
            forward(signal.SIGTERM, None)
            exit_code = max(exit_code, code if code > 0 else 1)
            continue
        log.error("Worker %d died (exit %d); starting a replacement.", pid, code)
        spawn()
    return exit_code
