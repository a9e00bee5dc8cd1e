"""`capi-gateway queue ...` on a real store with rows in every interesting state.

The tests taking `buffer` run on both backends: a SQLite file and a PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.cli import main
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres import listing
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.seal import Sealer
from gateway.delivery.store import OutboxStore
from gateway.models import NewEvent

KEY = bytes(range(32))
PIXEL_1 = "111111111111"
PIXEL_2 = "222222222222"
IP = "203.0.113.77"
UA = "Mozilla/5.0 (X11; Linux x86_64) SecretAgent/9.9"
FBP = "fb.1.1700000000000.1234567890"
EMAIL_HASH = hashlib.sha256(b"jane@example.com").hexdigest()
OLD = 3600.0


@dataclass(frozen=True)
class Buffer:
    """A filled store of one backend: a SQLite file path or a PostgreSQL URL."""

    location: Path | str
    ids: dict[str, int]  # event_id -> row id
    key: Path  # where the queue command looks for the key when none is configured


def new_event(pixel_id: str, event_name: str, event_id: str) -> NewEvent:
    payload = {
        "event_name": event_name,
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"em": EMAIL_HASH},
    }
    return NewEvent(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        event_time=payload["event_time"],
        payload=payload,
        clear={"client_ip_address": IP, "client_user_agent": UA, "fbp": FBP},
        source="api",
    )


async def open_box(location: Path | str) -> OutboxStore:
    """The outbox on `location`, either backend."""
    if isinstance(location, Path):
        return await Outbox.open(location, Sealer(KEY), group_commit_ms=0, durable=False)
    return await PgOutbox.open(location, Sealer(KEY), group_commit_ms=0)


def execute(location: Path | str, sql: str, *values: Any) -> list[tuple[Any, ...]]:
    """Run the test's own SQL (`?` marks) on either backend; the rows it returns."""
    if isinstance(location, Path):
        with sqlite3.connect(location) as db:
            return [tuple(r) for r in db.execute(sql, values)]
    marks = iter(range(1, sql.count("?") + 1))
    sql = re.sub(r"\?", lambda _: f"${next(marks)}", sql)

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(location, server_settings={"search_path": SCHEMA})
        try:
            return [tuple(r) for r in await conn.fetch(sql, *values)]
        finally:
            await conn.close()

    return asyncio.run(run())


async def _fill(location: Path | str) -> None:
    box = await open_box(location)
    try:
        await box.add(
            [
                new_event(PIXEL_1, "Purchase", "e1"),  # -> sent
                new_event(PIXEL_1, "Purchase", "e2"),  # -> dead
                new_event(PIXEL_2, "Purchase", "e3"),  # -> blocked (pixel 2 blocked)
                new_event(PIXEL_2, "Lead", "e4"),  # -> blocked
                new_event(PIXEL_1, "Lead", "e5"),  # -> inflight
            ]
        )
        # One claim of them all: the backends pick claims in orders of their own.
        claimed = {c.event_id: c for c in await box.claim("w1", limit=10, lease=600)}
        assert sorted(claimed) == ["e1", "e2", "e3", "e4", "e5"]
        await box.mark_sent([claimed["e1"].id], "w1", fbtrace_id="TRACE-SENT")
        await box.mark_dead(
            [claimed["e2"].id], "w1", error="invalid parameter", fbtrace_id="TRACE-DEAD"
        )
        await box.block_pixel(
            PIXEL_2,
            [claimed["e3"].id, claimed["e4"].id],
            "w1",
            token_fingerprint="fp-1",
            reason="token expired",
            fbtrace_id="TRACE-BLOCK",
        )
        await box.add([new_event(PIXEL_1, "PageView", "e6")])  # stays pending
    finally:
        await box.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue CLI reads the environment: keep the runner's META_*/CAPIGW_* out."""
    for name in list(os.environ):
        if name.startswith(("META_", "CAPIGW_")):
            monkeypatch.delenv(name)


@pytest.fixture
def buffer(store_location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Buffer:
    """The rows of `_fill` on each backend, with the key where the command looks by default."""
    location: Path | str
    if isinstance(store_location, Path):
        location = tmp_path / "outbox.db"
        # The key file where the gateway keeps it by default: beside the buffer.
        key = tmp_path / "outbox.db.key"
    else:
        location = store_location
        # A URL has no file beside it: the default key file is in the working directory.
        monkeypatch.chdir(tmp_path)
        key = tmp_path / "capi-gateway.db.key"
    asyncio.run(_fill(location))
    key.write_text(KEY.hex() + "\n")
    # Make the pending row an hour old so its age is measurable.
    execute(location, "UPDATE events SET created_at = ? WHERE event_id = 'e6'", time.time() - OLD)
    ids = {e: int(i) for e, i in execute(location, "SELECT event_id, id FROM events")}
    return Buffer(location, ids, key)


def rows(buf: Buffer) -> dict[str, tuple[str, int]]:
    """event_id -> (state, attempts) straight from the store."""
    return {
        e: (s, a)
        for e, s, a in execute(buf.location, "SELECT event_id, state, attempts FROM events")
    }


def blocked(buf: Buffer) -> list[str]:
    return [r[0] for r in execute(buf.location, "SELECT pixel_id FROM blocked_pixels")]


def queue(
    capsys: pytest.CaptureFixture[str], buf: Buffer | Path, *args: str
) -> tuple[int, str, str]:
    location = buf.location if isinstance(buf, Buffer) else buf
    code = main(["queue", args[0], "--buffer", str(location), *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def assert_sealed(text: str) -> None:
    for clear in (IP, UA, FBP):
        assert clear not in text


# stats ----------------------------------------------------------------------------


def test_stats_text(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "stats")
    assert code == 0
    counts = dict(re.findall(r"^(\S+)\s+(\d+)$", out, re.MULTILINE))
    assert counts == {
        "pending": "1",
        "inflight": "1",
        "sent": "1",
        "sent-dry": "0",
        "blocked": "2",
        "dead": "1",
    }
    age = re.search(r"oldest pending: (\d+) s", out)
    assert age is not None
    assert OLD - 5 <= int(age.group(1)) <= OLD + 60
    assert "Purchase: blocked 1, dead 1, sent 1" in out
    assert "Lead: blocked 1, inflight 1" in out
    assert "PageView: pending 1" in out
    assert f"BLOCKED pixel {PIXEL_2}: token expired (fbtrace_id TRACE-BLOCK)" in out
    assert PIXEL_1 not in out
    assert_sealed(out)


def test_stats_json(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["states"] == {
        "pending": 1,
        "inflight": 1,
        "sent": 1,
        "sent-dry": 0,
        "blocked": 2,
        "dead": 1,
    }
    assert stats["by_event_name"] == {
        "Lead": {"blocked": 1, "inflight": 1},
        "PageView": {"pending": 1},
        "Purchase": {"blocked": 1, "dead": 1, "sent": 1},
    }
    assert OLD - 5 <= stats["oldest_pending_age"] <= OLD + 60
    (block,) = stats["blocked_pixels"]
    assert block["pixel_id"] == PIXEL_2
    assert block["reason"] == "token expired"
    assert block["fbtrace_id"] == "TRACE-BLOCK"


def test_stats_of_an_empty_buffer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def create() -> None:
        box = await Outbox.open(tmp_path / "empty.db", Sealer(KEY), durable=False)
        await box.close()

    asyncio.run(create())
    code, out, _ = queue(capsys, tmp_path / "empty.db", "stats")
    assert code == 0
    assert "oldest pending: none" in out
    assert "BLOCKED" not in out
    code, out, _ = queue(capsys, tmp_path / "empty.db", "stats", "--json")
    stats = json.loads(out)
    assert set(stats["states"].values()) == {0}
    assert stats["oldest_pending_age"] is None
    assert stats["blocked_pixels"] == []


# list and export ------------------------------------------------------------------


def test_list_shows_hashes_and_seals_clear_fields(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = queue(capsys, buffer, "list")
    assert code == 0
    assert out.count(EMAIL_HASH) == 6
    assert out.count("<sealed") == 6
    assert_sealed(out)
    assert "error='invalid parameter'" in out
    assert "fbtrace_id=TRACE-SENT" in out
    # Newest first.
    ids = [int(n) for n in re.findall(r"^#(\d+) ", out, re.MULTILINE)]
    assert ids == sorted(buffer.ids.values(), reverse=True)


def test_list_reveal_shows_clear_fields(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "list", "--reveal")
    assert code == 0
    assert out.count(IP) == 6
    assert out.count(UA) == 6
    assert out.count(FBP) == 6
    assert "<sealed" not in out


def test_list_reveal_with_key_file_flag(
    buffer: Buffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = tmp_path / "elsewhere.key"
    buffer.key.rename(moved)
    code, out, _ = queue(capsys, buffer, "list", "--reveal", "--key-file", str(moved))
    assert code == 0
    assert IP in out


def test_list_reveal_with_encryption_key_env(
    buffer: Buffer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    buffer.key.unlink()
    monkeypatch.setenv("CAPIGW_ENCRYPTION_KEY", KEY.hex())
    code, out, _ = queue(capsys, buffer, "list", "--reveal", "--json")
    assert code == 0
    records = json_lines(out)
    assert {r["payload"]["user_data"]["client_ip_address"] for r in records} == {IP}


def test_list_reveal_without_any_key(
    buffer: Buffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer.key.unlink()
    code, out, err = queue(capsys, buffer, "list", "--reveal")
    assert code == 2
    assert out == ""
    assert err.startswith("capi-gateway: config error: encryption_key:")
    assert "--key-file" in err
    assert not buffer.key.exists(), "list must not generate a new key"


def test_list_reveal_with_a_malformed_key_file(
    buffer: Buffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    code, out, err = queue(capsys, buffer, "list", "--reveal", "--key-file", str(bad))
    assert code == 2
    assert out == ""
    assert "key_file" in err
    assert "bad.key" in err


def test_list_reveal_with_the_wrong_key(
    buffer: Buffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text(bytes(32).hex())
    code, out, err = queue(capsys, buffer, "list", "--reveal", "--key-file", str(wrong))
    assert code == 2
    assert "key" in err
    assert len(err.strip().splitlines()) == 1
    assert_sealed(out)


def test_list_reveal_with_the_wrong_key_subprocess(buffer: Buffer, tmp_path: Path) -> None:
    """Whatever the fix of the bug above prints, a wrong key fails and leaks no clear field."""
    wrong = tmp_path / "wrong.key"
    wrong.write_text(bytes(32).hex())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "queue",
            "list",
            "--reveal",
            "--buffer",
            str(buffer.location),
            "--key-file",
            str(wrong),
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "key" in result.stderr
    assert_sealed(result.stdout + result.stderr)


def test_list_state_dead(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "list", "--state", "dead")
    assert code == 0
    assert re.findall(r"^#(\d+) (\S+)", out, re.MULTILINE) == [(str(buffer.ids["e2"]), "dead")]
    assert "invalid parameter" in out
    assert_sealed(out)


def test_list_filters_and_limit(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = queue(capsys, buffer, "list", "--json", "--pixel-id", PIXEL_2)
    assert sorted(r["event_id"] for r in json_lines(out)) == ["e3", "e4"]
    _, out, _ = queue(capsys, buffer, "list", "--json", "--event-name", "Purchase")
    assert sorted(r["event_id"] for r in json_lines(out)) == ["e1", "e2", "e3"]
    _, out, _ = queue(capsys, buffer, "list", "--json", "--id", str(buffer.ids["e5"]))
    assert [r["state"] for r in json_lines(out)] == ["inflight"]
    _, out, _ = queue(capsys, buffer, "list", "--json", "--limit", "2")
    assert len(json_lines(out)) == 2


def test_list_nothing_matches(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "list", "--state", "sent-dry")
    assert code == 0
    assert out.strip() == "no events match"


def test_list_unknown_state(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = queue(capsys, buffer, "list", "--state", "stuck")
    assert code == 2
    assert out == ""
    assert "--state" in err
    assert "stuck" in err
    assert "pending" in err


def test_export_prints_json_lines(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "export")
    assert code == 0
    records = json_lines(out)
    assert len(records) == len(out.strip().splitlines()) == 6
    by_event = {r["event_id"]: r for r in records}
    assert {e: r["state"] for e, r in by_event.items()} == {
        "e1": "sent",
        "e2": "dead",
        "e3": "blocked",
        "e4": "blocked",
        "e5": "inflight",
        "e6": "pending",
    }
    dead = by_event["e2"]
    assert dead["last_error"] == "invalid parameter"
    assert dead["fbtrace_id"] == "TRACE-DEAD"
    assert dead["pixel_id"] == PIXEL_1
    assert dead["payload"]["user_data"]["em"] == EMAIL_HASH
    assert dead["payload"]["user_data"]["_sealed"].startswith("<sealed")
    assert_sealed(out)


def test_export_reveal(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "export", "--reveal", "--state", "blocked")
    assert code == 0
    records = json_lines(out)
    assert len(records) == 2
    for record in records:
        user_data = record["payload"]["user_data"]
        assert user_data == {
            "em": EMAIL_HASH,
            "client_ip_address": IP,
            "client_user_agent": UA,
            "fbp": FBP,
        }


# retry ----------------------------------------------------------------------------


def test_retry_moves_dead_and_blocked_back_and_lifts_the_block(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rows(buffer)["e3"] == ("blocked", 1)
    code, out, _ = queue(capsys, buffer, "retry")
    assert code == 0
    assert "3 event(s)" in out
    assert rows(buffer) == {
        "e1": ("sent", 1),
        "e2": ("pending", 0),
        "e3": ("pending", 0),
        "e4": ("pending", 0),
        "e5": ("inflight", 1),
        "e6": ("pending", 0),
    }
    assert blocked(buffer) == []
    _, out, _ = queue(capsys, buffer, "stats", "--json")
    assert json.loads(out)["blocked_pixels"] == []


def test_retry_dead_only_keeps_the_block(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = queue(capsys, buffer, "retry", "--state", "dead")
    assert code == 0
    assert "1 event(s)" in out
    state = rows(buffer)
    assert state["e2"] == ("pending", 0)
    assert state["e3"] == state["e4"] == ("blocked", 1)
    assert blocked(buffer) == [PIXEL_2]


def test_retry_blocked_of_one_pixel(buffer: Buffer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = queue(capsys, buffer, "retry", "--state", "blocked", "--pixel-id", PIXEL_2)
    assert code == 0
    assert "2 event(s)" in out
    state = rows(buffer)
    assert state["e3"] == state["e4"] == ("pending", 0)
    assert state["e2"] == ("dead", 1)
    assert blocked(buffer) == []


def test_retry_by_id_ignores_rows_not_dead_or_blocked(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    before = rows(buffer)
    code, out, _ = queue(capsys, buffer, "retry", "--id", str(buffer.ids["e1"]))
    assert code == 0
    assert "0 event(s)" in out
    assert rows(buffer) == before


@pytest.mark.parametrize("state", ["sent", "pending", "inflight"])
def test_retry_refuses_other_states(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    before = rows(buffer)
    code, out, err = queue(capsys, buffer, "retry", "--state", state)
    assert code == 2
    assert out == ""
    assert "dead or blocked" in err
    assert rows(buffer) == before
    assert blocked(buffer) == [PIXEL_2]


# purge ----------------------------------------------------------------------------


def test_purge_deletes_delivered_rows_and_keeps_dead_letters_without_yes(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = queue(capsys, buffer, "purge")
    assert code == 0
    assert "1 event(s) purged" in out
    assert "kept 1 dead letter(s)" in out and "--yes" in out
    assert sorted(rows(buffer)) == ["e2", "e3", "e4", "e5", "e6"]
    code, out, _ = queue(capsys, buffer, "purge", "--yes")
    assert code == 0
    assert "1 event(s) purged" in out
    assert sorted(rows(buffer)) == ["e3", "e4", "e5", "e6"]


def test_purge_sent_needs_no_confirmation(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = queue(capsys, buffer, "purge", "--state", "sent")
    assert code == 0
    assert "1 event(s) purged" in out
    assert "e1" not in rows(buffer)
    assert "e2" in rows(buffer)


@pytest.mark.parametrize(
    ("state", "event_ids"), [("pending", ["e6"]), ("blocked", ["e3", "e4"]), ("dead", ["e2"])]
)
def test_purge_of_undelivered_rows_needs_yes(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], state: str, event_ids: list[str]
) -> None:
    before = rows(buffer)
    code, out, err = queue(capsys, buffer, "purge", "--state", state)
    assert code == 2
    assert out == ""
    assert "--yes" in err
    assert rows(buffer) == before

    code, out, _ = queue(capsys, buffer, "purge", "--state", state, "--yes")
    assert code == 0
    assert f"{len(event_ids)} event(s) purged" in out
    assert sorted(set(before) - set(rows(buffer))) == event_ids


# missing buffer -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "list", "retry", "purge", "export"])
def test_missing_buffer(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    missing = tmp_path / "nothing-here.db"
    code, out, err = queue(capsys, missing, command)
    assert code == 2
    assert out == ""
    assert err.strip() == (
        f"capi-gateway: config error: buffer: no outbox at {missing}; pass --buffer PATH"
    )
    assert not missing.exists(), "inspecting must not create an empty outbox"


def test_buffer_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "not-an-outbox.db"
    path.write_text("hello, not a database\n")
    code, _, err = queue(capsys, path, "stats")
    assert code == 2
    assert err.startswith("capi-gateway: config error: buffer:")
    assert str(path) in err


def test_buffer_that_is_a_directory(tmp_path: Path) -> None:
    # In a subprocess: aiosqlite's worker thread outlives the failed connect in-process.
    path = tmp_path / "outbox.db"
    path.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "queue", "stats", "--buffer", str(path)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert result.stderr.startswith("capi-gateway: config error: buffer:")


def test_list_json_rows_carry_their_sources_and_late_copies(
    buffer: Buffer, capsys: pytest.CaptureFixture[str]
) -> None:
    async def copies() -> None:
        box = await open_box(buffer.location)
        try:
            hook = replace(new_event(PIXEL_1, "PageView", "e6"), source="webhook", rule="crm")
            late = replace(new_event(PIXEL_1, "Purchase", "e1"), source="collect")
            assert await box.add([hook, late]) == ["merged", "late"]
        finally:
            await box.close()

    asyncio.run(copies())
    code, out, _ = queue(capsys, buffer, "list", "--json")
    assert code == 0
    by_id = {row["event_id"]: row for row in json_lines(out)}
    assert by_id["e6"]["sources"] == ["api", "webhook:crm"]
    assert by_id["e5"]["sources"] == ["api"]
    assert by_id["e1"]["late"]["copies"] == 1 and by_id["e1"]["late"]["sources"] == ["browser"]
    assert "late" not in by_id["e6"]


def _site_config(tmp_path: Path) -> Path:
    config = tmp_path / "sites.toml"
    tables = "".join(
        f'[[sites]]\nname = "{name}"\nhosts = ["{name}.example"]\n'
        f'upstream = "http://127.0.0.1:9"\npixel_id = [{pixel}]\n'
        for name, pixel in (("alpha", PIXEL_1), ("beta", PIXEL_2))
    )
    config.write_text(tables)
    return config


def test_site_narrows_stats_and_lists_to_one_sites_events(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    execute(
        buffer.location,
        "UPDATE events SET site = CASE pixel_id WHEN ? THEN 'alpha' ELSE 'beta' END",
        PIXEL_1,
    )
    config = str(_site_config(tmp_path))
    code, out, _ = queue(capsys, buffer, "stats", "--json", "--config", config, "--site", "beta")
    assert code == 0
    assert json.loads(out)["states"]["blocked"] == 2
    assert sum(json.loads(out)["states"].values()) == 2
    code, out, _ = queue(capsys, buffer, "list", "--json", "--config", config, "--site", "alpha")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert {row["pixel_id"] for row in listed} == {PIXEL_1} and len(listed) == 4


def test_an_unknown_site_is_named(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(_site_config(tmp_path))
    code, _, err = queue(capsys, buffer, "stats", "--config", config, "--site", "gamma")
    assert code != 0
    assert "--site: no site is named 'gamma' (configured: alpha, beta)" in err


def test_retry_and_purge_with_site_touch_that_sites_events_only(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    execute(
        buffer.location,
        "UPDATE events SET site = CASE pixel_id WHEN ? THEN 'alpha' ELSE 'beta' END",
        PIXEL_1,
    )
    config = str(_site_config(tmp_path))
    code, out, _ = queue(capsys, buffer, "retry", "--config", config, "--site", "alpha")
    assert code == 0 and "1 event(s)" in out
    state = rows(buffer)
    assert state["e2"] == ("pending", 0)
    assert state["e3"] == state["e4"] == ("blocked", 1)
    assert blocked(buffer) == [PIXEL_2]
    code, out, _ = queue(capsys, buffer, "purge", "--yes", "--config", config, "--site", "beta")
    assert code == 0 and "0 event(s) purged" in out
    code, out, _ = queue(
        capsys, buffer, "purge", "--state", "blocked", "--yes", "--config", config, "--site", "beta"
    )
    assert code == 0 and "2 event(s) purged" in out
    assert sorted(rows(buffer)) == ["e1", "e2", "e5", "e6"]


def test_purge_deletes_in_batches(
    buffer: Buffer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a purge deletes in batches (short locks): more rows than one batch all go.
    monkeypatch.setattr(listing, "PURGE_BATCH", 1)
    code, out, _ = queue(capsys, buffer, "purge", "--yes")
    assert code == 0
    assert "2 event(s) purged" in out
    assert sorted(rows(buffer)) == ["e3", "e4", "e5", "e6"]
