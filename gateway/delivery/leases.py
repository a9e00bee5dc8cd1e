"""Lease owners (`host:pid:nonce`) read back: which process of this host holds a lease, and
whether it still runs. Both stores use these to take back a crashed process's rows at start.
"""

from __future__ import annotations

import os


def pid_of(owner: str, host: str) -> int | None:
    """The pid in an owner `host:pid:nonce` (gateway.delivery.sender) of `host`, else None."""
    if not owner.startswith(host + ":"):
        return None
    parts = owner[len(host) + 1 :].split(":")
    return int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None


def pid_gone(pid: int) -> bool:
    """Whether no process `pid` runs on this host (our own pid counts as gone: a lease of
    ours older than this store is a previous life's, e.g. pid 1 in a restarted container)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's live process
    return False
