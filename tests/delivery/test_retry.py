"""RetryPolicy (full-jitter backoff) and Retry-After parsing."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from gateway.delivery.retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after

SAMPLES = 2000


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 10, 11, 20, 50])
def test_delay_stays_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy()
    rng = random.Random(attempt)
    ceiling = min(policy.cap, policy.base * 2 ** (attempt - 1))
    delays = [policy.delay(attempt, rng=rng) for _ in range(SAMPLES)]

    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter covers the whole window, not just its upper half.
    assert min(delays) < ceiling * 0.05
    assert max(delays) > ceiling * 0.95
    assert abs(sum(delays) / SAMPLES - ceiling / 2) < ceiling * 0.05


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.delay(4, rng=random.Random(7)) for _ in range(3)]
    second = [policy.delay(4, rng=random.Random(7)) for _ in range(3)]
    assert first == second


def test_delay_without_rng_uses_module_random() -> None:
    policy = RetryPolicy(base=0.5, cap=2.0)
    assert all(0.0 <= policy.delay(3) <= 2.0 for _ in range(100))


def test_throttled_widens_the_window() -> None:
    policy = RetryPolicy(base=1.0, cap=900.0, throttle_factor=4.0)
    rng = random.Random(1)
    plain = [policy.delay(3, rng=rng) for _ in range(SAMPLES)]
    throttled = [policy.delay(3, throttled=True, rng=rng) for _ in range(SAMPLES)]

    assert max(plain) <= 4.0
    assert all(0.0 <= d <= 16.0 for d in throttled)
    assert max(throttled) > 15.0
    assert sum(throttled) / SAMPLES > 2 * sum(plain) / SAMPLES


@pytest.mark.parametrize("throttled", [False, True])
def test_cap_bounds_every_delay(throttled: bool) -> None:
    policy = RetryPolicy(base=1.0, cap=30.0)
    rng = random.Random(3)
    for attempt in (6, 10, 100, 10_000):
        delays = [policy.delay(attempt, throttled=throttled, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= 30.0 for d in delays)
        assert max(delays) > 25.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy()
    rng = random.Random(5)
    delays = [policy.delay(1, retry_after=42.0, rng=rng) for _ in range(SAMPLES)]
    assert all(d == 42.0 for d in delays)

    # A Retry-After inside the jitter window only raises the low end.
    late = [policy.delay(10, retry_after=100.0, rng=rng) for _ in range(SAMPLES)]
    assert all(100.0 <= d <= 512.0 for d in late)
    assert max(late) > 400.0


def test_retry_after_is_honoured_above_the_cap_up_to_a_day() -> None:
    policy = RetryPolicy(cap=60.0)
    rng = random.Random(9)
    assert policy.delay(1, retry_after=3600.0, rng=rng) == 3600.0
    assert policy.delay(1, retry_after=10 * 86_400.0, rng=rng) == MAX_RETRY_AFTER == 86_400.0


@pytest.mark.parametrize("retry_after", [0.0, -5.0, float("nan"), float("inf")])
def test_meaningless_retry_after_is_ignored(retry_after: float) -> None:
    policy = RetryPolicy()
    assert 0.0 <= policy.delay(1, retry_after=retry_after, rng=random.Random(0)) <= 1.0


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        RetryPolicy().delay(0)


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0.0}, {"base": -1.0}, {"cap": 0.5}, {"throttle_factor": 0.5}, {"max_attempts": 0}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.exhausted(0)
    assert not policy.exhausted(2)
    assert policy.exhausted(3)
    assert policy.exhausted(4)
    assert RetryPolicy().exhausted(50) and not RetryPolicy().exhausted(49)


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.base = 2.0  # type: ignore[misc]


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("86400", 86_400.0)],
)
def test_parse_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_dates() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    # The two obsolete formats HTTP still allows.
    assert parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wed Oct 21 07:28:10 2015", now=now) == 10.0
    # A date in the past means "now".
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0


def test_parse_retry_after_http_date_against_the_clock() -> None:
    parsed = parse_retry_after(formatdate(time.time() + 90, usegmt=True))
    assert parsed is not None
    assert 85.0 <= parsed <= 91.0


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "-5", "1e3", "12 seconds", "Wed, 99 Foo 2015", "٣", "9" * 400],
)
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value) is None
