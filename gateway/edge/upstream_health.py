"""How the upstream site is doing: proxied outcomes in, reachability and recent error rate out.

The proxy records one outcome per request (`ok`, `5xx` answered by the site, `unreachable`
→ our 502, `timeout` → our 504) into a ring of time buckets: O(1), no lock (one event
loop), no allocation per request. `/health` (readiness), `/status` and `doctor` read it.
When no request came lately, a TCP connect (cached a few seconds) says whether the site
is reachable at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from yarl import URL

OUTCOMES = ("ok", "5xx", "unreachable", "timeout")
# The recent window: 12 buckets of 5 s.
_BUCKET = 5.0
_BUCKETS = 12
WINDOW = _BUCKET * _BUCKETS
# Readiness fails when at least this share of at least this many recent requests failed.
FAIL_SHARE = 0.5
FAIL_MIN_REQUESTS = 5
_PROBE_TTL = 5.0
_PROBE_TIMEOUT = 2.0


class UpstreamHealth:
    """Counters per outcome since start, and per time bucket over the last minute."""

    def __init__(self, upstream: str) -> None:
        self.url = URL(upstream)
        self.totals = dict.fromkeys(OUTCOMES, 0)
        # Each bucket: [bucket number, ok, 5xx, unreachable, timeout].
        self._ring = [[-1, 0, 0, 0, 0] for _ in range(_BUCKETS)]
        self.last_ok: float | None = None
        self.last_error: dict[str, Any] | None = None
        self._probe: tuple[float, bool, str] | None = None

    def record(self, outcome: str, *, status: int | None = None, now: float | None = None) -> None:
        """Count one proxied request's outcome (one of OUTCOMES)."""
        now = time.time() if now is None else now
        number = int(now // _BUCKET)
        bucket = self._ring[number % _BUCKETS]
        if bucket[0] != number:
            bucket[:] = [number, 0, 0, 0, 0]
        index = OUTCOMES.index(outcome)
        bucket[1 + index] += 1
        self.totals[outcome] += 1
        if outcome == "ok":
            self.last_ok = now
        else:
            self.last_error = {"kind": outcome, "status": status, "at": round(now, 3)}

    def ok(self) -> None:
        """`record("ok")` now, without its lookups: every proxied asset comes by here."""
        now = time.time()
        number = int(now // _BUCKET)
        bucket = self._ring[number % _BUCKETS]
        if bucket[0] != number:
            bucket[:] = [number, 0, 0, 0, 0]
        bucket[1] += 1
        self.totals["ok"] += 1
        self.last_ok = now

    def recent(self, now: float | None = None) -> dict[str, int]:
        """Requests per outcome over the last WINDOW seconds."""
        now = time.time() if now is None else now
        oldest = int(now // _BUCKET) - _BUCKETS + 1
        out = dict.fromkeys(OUTCOMES, 0)
        for bucket in self._ring:
            if bucket[0] >= oldest:
                for i, name in enumerate(OUTCOMES):
                    out[name] += bucket[1 + i]
        return out

    async def probe(self) -> tuple[bool, str]:
        """Whether a TCP connection to the upstream opens (cached for a few seconds)."""
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < _PROBE_TTL:
            return self._probe[1], self._probe[2]
        host, port = self.url.host or "", self.url.port or 80
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_TIMEOUT)
        except TimeoutError:
            result = (False, "connecting timed out")
        except OSError as exc:
            result = (False, f"cannot connect ({exc.strerror or type(exc).__name__})")
        else:
            writer.close()
            result = (True, "")
        self._probe = (now, *result)
        return result

    async def report(self, now: float | None = None) -> dict[str, Any]:
        """Reachability, the recent outcomes and their error rate, and whether that is fine."""
        recent = self.recent(now)
        total = sum(recent.values())
        failed = total - recent["ok"]
        rate = failed / total if total else 0.0
        reachable, why = await self.probe()
        body: dict[str, Any] = {
            "reachable": reachable,
            "window_seconds": WINDOW,
            "recent": {"requests": total, **recent},
            "error_rate": round(rate, 3),
            "last_ok": self.last_ok,
            "last_error": self.last_error,
        }
        problems = []
        if not reachable:
            problems.append(f"the upstream is unreachable: {why}; visitors get 502")
        if total >= FAIL_MIN_REQUESTS and rate >= FAIL_SHARE:
            problems.append(
                f"{rate:.0%} of the last {total} proxied request(s) in {WINDOW:.0f} s failed "
                f"({recent['5xx']} 5xx from the site, {recent['unreachable']} unreachable → "
                f"502, {recent['timeout']} timed out → 504)"
            )
        body["ok"] = not problems
        if problems:
            body["detail"] = "; ".join(problems)
        return body
