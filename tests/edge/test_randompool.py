"""The page path's pool of random bytes: fresh slices, refilled, never shared with a fork."""

from __future__ import annotations

import os

import pytest

from gateway.edge.randompool import RandomPool


def test_slices_are_consecutive_and_refilled_past_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counted(n: int) -> bytes:
        calls.append(n)
        return bytes(range(len(calls), len(calls) + n))

    monkeypatch.setattr(os, "urandom", counted)
    pool = RandomPool(size=8)
    assert pool.take(5) == bytes([1, 2, 3, 4, 5])
    assert pool.take(3) == bytes([6, 7, 8])
    assert pool.take(4) == bytes([2, 3, 4, 5])  # 4 > 0 left: a new pool, from its start
    assert pool.take(20) == bytes(range(3, 23))  # larger than the pool: drawn whole
    assert calls == [8, 8, 20]


def test_a_forked_worker_draws_its_own_bytes() -> None:
    pool = RandomPool()
    pool.take(16)  # the pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, pool.take(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 100)
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 16 and child != pool.take(16)
