"""Random bytes for the page path: one `os.urandom` call per 4 KiB instead of one per value.

A tagged page of a new visitor needs an event id (10 random bytes) and an `_fbp` number
(4 bytes); `os.urandom` and `secrets.randbelow` make a `getrandom` system call for each,
which costs more than the rest of either value. For the event loop's thread only (no lock:
two threads sharing the pool could take the same slice); a forked worker starts with an
empty pool, so it never hands out what its parent still holds.
"""

from __future__ import annotations

import os


class RandomPool:
    """Slices of one buffer of `os.urandom` bytes, refilled when it runs out."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at = b"", 0

    def take(self, n: int) -> bytes:
        """`n` fresh random bytes (`n` at most the pool's size), never handed out before."""
        at = self._at
        if at + n > len(self._pool):
            self._pool, at = os.urandom(max(self._size, n)), 0
        self._at = at + n
        return self._pool[at : at + n]


random_bytes = RandomPool()
"""The worker's pool: page event ids and new `_fbp` numbers."""
