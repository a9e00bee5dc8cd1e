"""`--since`/`--until` parsing: dates, dates and times, spans back from now, bad values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.insights.policy import check_channels
from gateway.insights.timerange import RangeError, parse_range
from gateway.settings import ConfigError, Settings

NOW = datetime(2026, 12, 6, 22, 0, tzinfo=UTC).timestamp()


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_default_is_the_last_thirty_days_up_to_now() -> None:
    assert parse_range(None, None, now=NOW) == (int(NOW) - 30 * 86400, int(NOW) + 1)


def test_a_bare_until_date_includes_that_day() -> None:
    assert parse_range("2026-12-01", "2026-12-05", now=NOW) == (
        ts("2026-12-01T00:00:00"),
        ts("2026-12-06T00:00:00"),
    )


def test_spans_and_times() -> None:
    assert parse_range("7d", None, now=NOW)[0] == int(NOW) - 7 * 86400
    assert parse_range("12h", "1h", now=NOW) == (int(NOW) - 12 * 3600, int(NOW) - 3600)
    assert parse_range("2026-12-01T08:00:00Z", "2026-12-01T09:30:00+01:00", now=NOW) == (
        ts("2026-12-01T08:00:00"),
        ts("2026-12-01T08:30:00"),
    )


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", None, "'yesterday' is not a date"),
        ("2026-13-01", None, "is not a date"),
        ("2026-12-05", "2026-12-01", "must be before until"),
    ],
)
def test_bad_ranges_say_what_is_accepted(since: str, until: str | None, message: str) -> None:
    with pytest.raises(RangeError, match=message):
        parse_range(since, until, now=NOW)


def test_a_channel_rule_that_matches_nothing_is_a_config_error_naming_the_key() -> None:
    ok = Settings.model_validate(
        {"insights": {"channels": [{"channel": "Partners", "source": "partner-.*"}]}}
    )
    check_channels(ok)
    bad = Settings.model_validate(
        {
            "pixel_id": ["123456789012345"],
            "sites": [
                {
                    "name": "shop",
                    "hosts": ["shop.example"],
                    "upstream": "http://127.0.0.1:1",
                    "insights": {"channels": [{"channel": "X", "medium": "("}]},
                }
            ],
        }
    )
    with pytest.raises(ConfigError, match=r"sites\.shop\.insights\.channels\[0\]: medium"):
        check_channels(bad)
