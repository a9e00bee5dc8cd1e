"""`--workers N`: N forked processes listening on one port (SO_REUSEPORT), one buffer.

Each worker is a whole gateway: it accepts requests and runs its own sender. Row leases
in the shared SQLite file keep them from sending an event twice, and a worker that dies
is replaced; its leases expire and its claimed rows are sent by the others.

The parent only supervises. It handles its signals synchronously (blocked, then taken
with `sigtimedwait`), so a signal never interrupts it half-way through forking or
reaping: SIGHUP re-reads the configuration for the workers it will start later and is
passed on to every worker; SIGTERM/SIGINT are passed on and the parent waits for the
workers to stop (killing those that outlive the grace period); a dead worker is reaped
and replaced, with a growing delay when replacements keep dying.

A worker starts with SIGTERM, SIGINT and SIGHUP blocked and `gateway.app.serve` unblocks
them once its handlers are installed: a reload or a stop that arrives while a worker is
starting is delivered when it can be handled, instead of killing the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.delivery.postgres.outbox import open_postgres
from gateway.delivery.schema import connect
from gateway.delivery.seal import Sealer, load_key
from gateway.ops.prometheus import prepare_multiprocess_dir, worker_exited
from gateway.settings import Settings

log = logging.getLogger("gateway.workers")

# The signals a worker handles itself (blocked until its handlers exist).
WORKER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_PARENT_SIGNALS = WORKER_SIGNALS | {signal.SIGCHLD}

# A worker of the first generation that dies this soon after starting failed at start-up
# (bad port, bad buffer): the configuration is at fault, so everything stops.
_MIN_LIFETIME = 2.0
# A replacement that lived less than this counts as one more failure in a row; each one
# doubles the wait before the next replacement, up to _BACKOFF_CAP.
_STABLE_LIFETIME = 30.0
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 30.0
# Beyond the workers' own grace period, the time they get to exit before SIGKILL.
_KILL_MARGIN = 5.0
# Reap even if a SIGCHLD was somehow missed.
_TICK = 1.0
_PR_SET_PDEATHSIG = 1


def block_signals() -> None:
    """Hold SIGTERM, SIGINT and SIGHUP until the process can handle them (see module doc)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)


async def prepare_buffer(settings: Settings) -> None:
    """Create the outbox key and schema in the parent, before any worker races for them."""
    key = load_key(settings)
    if settings.store_url is not None:
        # Migrate once (and check the key) before the workers open their pools.
        outbox = await open_postgres(settings, Sealer(key), None)
        await outbox.close()
    else:
        conn = await connect(settings.buffer)
        await conn.close()
    # Workers add up their metrics through files there: a fresh, empty directory per run.
    prepare_multiprocess_dir(settings)


@dataclass(slots=True)
class _Slot:
    """One of the N worker places: its process, or when its replacement is due."""

    pid: int | None = None
    started: float = 0.0
    replacement: bool = False
    failures: int = 0  # replacements in a row that died young
    due: float | None = None  # monotonic time to start a replacement


def exit_status(code: int) -> int:
    """A worker's exit as the parent reports it: its code, or 128 + signal if killed."""
    return 128 - code if code < 0 else code


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


class _Supervisor:
    def __init__(
        self,
        count: int,
        work: Callable[[], int],
        reload: Callable[[], None] | None,
        grace: float,
    ) -> None:
        self.work = work
        self.reload = reload
        self.grace = grace
        self.slots = [_Slot() for _ in range(count)]
        self.stopping = False
        self.kill_at: float | None = None
        self.exit_code = 0
        self.parent_pid = os.getpid()

    # -- children -------------------------------------------------------------------------

    def spawn(self, slot: _Slot) -> None:
        slot.due = None
        try:
            pid = os.fork()
        except OSError as exc:
            # Out of processes or memory: the workers still running carry on; try later.
            slot.failures += 1
            delay = max(_BACKOFF_BASE, self.backoff(slot))
            slot.due = time.monotonic() + delay
            log.error("Cannot start a worker (%s); trying again in %.1f s.", exc, delay)
            return
        if pid == 0:
            self._child()
        slot.pid = pid
        slot.started = time.monotonic()
        if slot.replacement:
            log.info("Started worker %d in place of the one that died.", pid)

    def _child(self) -> None:
        code = 1
        try:
            # SIGCHLD back to normal; the worker's own signals stay blocked until
            # gateway.app.serve has its handlers in place.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _die_with_parent(self.parent_pid)
            code = self.work()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            log.exception("Worker %d crashed.", os.getpid())
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def live(self) -> list[_Slot]:
        return [s for s in self.slots if s.pid is not None]

    def send(self, signum: int) -> None:
        for slot in self.live():
            assert slot.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signum)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self.died(slot, os.waitstatus_to_exitcode(status))

    def died(self, slot: _Slot, code: int) -> None:
        pid, lifetime = slot.pid, time.monotonic() - slot.started
        slot.pid = None
        if pid is not None:
            worker_exited(pid)
        if self.stopping:
            if code != 0:
                log.warning("Worker %d did not stop cleanly (%s).", pid, _describe(code))
            self.exit_code = max(self.exit_code, exit_status(code))
            return
        # Exit 0 is a worker told to stop (say, SIGTERM sent to it alone): replace it.
        # Killed by a signal (the OOM killer, an operator) is not a bad configuration.
        if code > 0 and not slot.replacement and lifetime < _MIN_LIFETIME:
            log.error(
                "Worker %d failed at start-up (%s); stopping the others.", pid, _describe(code)
            )
            self.exit_code = max(self.exit_code, exit_status(code) or 1)
            self.stop(signal.SIGTERM)
            return
        slot.failures = 0 if lifetime >= _STABLE_LIFETIME else slot.failures + 1
        delay = self.backoff(slot)
        slot.replacement = True
        slot.due = time.monotonic() + delay
        log.error(
            "Worker %d died (%s) after %.1f s; starting a replacement%s.",
            pid,
            _describe(code),
            lifetime,
            f" in {delay:.1f} s ({slot.failures} early deaths in a row)" if delay else "",
        )

    @staticmethod
    def backoff(slot: _Slot) -> float:
        """No wait for a first death; then 0.5 s, doubling, up to 30 s."""
        if slot.failures <= 1:
            return 0.0
        return float(min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (slot.failures - 2)))

    # -- signals --------------------------------------------------------------------------

    def stop(self, signum: int) -> None:
        if not self.stopping:
            self.stopping = True
            self.kill_at = time.monotonic() + self.grace + _KILL_MARGIN
            for slot in self.slots:
                slot.due = None
            log.info("Stopping %d worker(s).", len(self.live()))
        self.send(signum)

    def hangup(self) -> None:
        if self.stopping:
            return
        if self.reload is not None:
            try:
                self.reload()
            except Exception as exc:
                # Each worker reads the configuration itself and says the same; here it
                # only decides what a replacement worker would start with.
                log.error(
                    "Reload refused by the supervisor; replacement workers keep the running "
                    "configuration: %s",
                    exc,
                )
        self.send(signal.SIGHUP)

    def on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(signum)
        elif signum == signal.SIGHUP:
            self.hangup()
        # SIGCHLD: reaped at the top of the loop.

    # -- the loop -------------------------------------------------------------------------

    def timeout(self) -> float:
        now = time.monotonic()
        times = [s.due for s in self.slots if s.due is not None]
        if self.kill_at is not None:
            times.append(self.kill_at)
        return max(0.0, min([now + _TICK, *times]) - now)

    def run(self) -> int:
        for slot in self.slots:
            self.spawn(slot)
        log.info("Started %d workers.", len(self.live()))
        while True:
            info = signal.sigtimedwait(_PARENT_SIGNALS, self.timeout())
            # Every pending signal before reaping: a SIGTERM sent to the whole process group
            # is seen before the workers it stopped, so they are not replaced.
            while info is not None:
                self.on_signal(info.si_signo)
                info = signal.sigtimedwait(_PARENT_SIGNALS, 0)
            self.reap()
            if self.stopping and not self.live():
                return self.exit_code
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                for slot in self.live():
                    log.error("Worker %d did not stop in time; killing it.", slot.pid)
                self.send(signal.SIGKILL)
                self.kill_at = None
            for slot in self.slots:
                if slot.due is not None and now >= slot.due and not self.stopping:
                    self.spawn(slot)


def run_workers(
    count: int,
    work: Callable[[], int],
    *,
    reload: Callable[[], None] | None = None,
    grace: float = 10.0,
) -> int:
    """Fork `count` workers running `work`, replace dead ones, pass signals on; the exit code.

    `reload` runs in the parent on SIGHUP (before the workers get it) so that workers
    started later use the new configuration; it may raise to refuse it. `grace` is the
    workers' shutdown grace: one that has not exited `grace` + 5 s after SIGTERM is killed.
    The exit code is 0 after a clean stop, else the highest worker exit status (128 + N
    for a worker killed by signal N).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    try:
        return _Supervisor(count, work, reload, grace).run()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        # The parent died before the prctl took effect: nobody would stop this worker.
        os._exit(1)
