"""SQLite schema migration 11: an event's delivery state in `event_queue`, beside its
write-once `event_data` row, `events` a view over both (gateway/delivery/queueschema.py).

A file of the previous schema with rows in every state migrates, and every command reads
it as it reads the same rows written by this release: `queue stats|list|export|retry`,
`doctor`'s store checks, `forget`, the dashboard and `serve`'s claims and results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.data import load_dashboard
from gateway.cli import main
from gateway.commands.doctor import check_buffer
from gateway.delivery.outbox import Outbox
from gateway.delivery.reads import reading
from gateway.delivery.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from gateway.settings import Settings

KEY = bytes(range(32))
PIXEL_1 = "111111111111"
PIXEL_2 = "222222222222"
FBP = "fb.1.1700000000000.1234567890"
JANE = hashlib.sha256(b"jane@example.com").hexdigest()
OLD_VERSION = 10  # the schema before migration 11


def new_event(pixel_id: str, event_name: str, event_id: str, email: str = JANE) -> NewEvent:
    payload = {
        "event_name": event_name,
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "user_data": {"em": email},
    }
    return NewEvent(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        event_time=payload["event_time"],
        payload=payload,
        clear={"client_ip_address": "203.0.113.7", "client_user_agent": "UA/1", "fbp": FBP},
        source="api",
    )


async def fill(path: Path) -> None:
    """Rows in every state (as tests/commands/test_queue.py fills its buffer)."""
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    try:
        await box.add(
            [
                new_event(PIXEL_1, "Purchase", "e1"),  # -> sent
                new_event(PIXEL_1, "Purchase", "e2"),  # -> dead
                new_event(PIXEL_2, "Purchase", "e3"),  # -> blocked
                new_event(PIXEL_1, "Lead", "e4", email="other"),  # -> inflight
            ]
        )
        claimed = {c.event_id: c.id for c in await box.claim("w1", limit=10, lease=600)}
        await box.mark_sent([claimed["e1"]], "w1", fbtrace_id="T-SENT")
        await box.mark_dead([claimed["e2"]], "w1", error="invalid parameter", fbtrace_id="T-D")
        await box.block_pixel(
            PIXEL_2,
            [claimed["e3"]],
            "w1",
            token_fingerprint="fp",
            reason="token expired",
            fbtrace_id="T-B",
        )
        await box.add([new_event(PIXEL_1, "PageView", "e5")])  # stays pending (held)
        await box.add([new_event(PIXEL_1, "Lead", "e6")])  # pending
    finally:
        await box.close()


def previous_schema_copy(source: Path, path: Path) -> None:
    """A file of the schema before migration 11 holding `source`'s rows, as that release
    wrote them (`events` a table with every column, in the same column order)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for sql in MIGRATIONS[:OLD_VERSION]:
            conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {OLD_VERSION}")
        conn.execute("ATTACH ? AS src", (str(source),))
        for table in ("events", "blocked_pixels", "insight_events", "touchpoints"):
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table}")
    conn.close()
    path.with_name(path.name + ".key").write_text(KEY.hex() + "\n")


def table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = [tuple(r) for r in conn.execute(sql)]
    conn.close()
    return rows


def command(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit code and output, the age of the oldest pending row (read a moment apart) masked."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, re.sub(r"(oldest[^0-9]*)[0-9.]+", r"\1<age>", out + err)


def settings(path: Path) -> Settings:
    return Settings.model_validate(
        {
            "pixel_id": [PIXEL_1],
            "access_token": "EAAB-test",
            "buffer": path,
            "events_api_keys": ["k" * 20],
        }
    )


async def findings(path: Path) -> list[str]:
    found = await check_buffer(settings(path), [])
    return [f"{f.level.value} {f.check} {f.message}".replace(str(path), "<buffer>") for f in found]


async def dashboard(path: Path, now: float) -> Any:
    async with reading(path) as conn:
        return await load_dashboard(conn, [], rules_dir=None, now=now)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """(a file written by this release, the same rows in a file of the previous schema)."""
    new = tmp_path / "new.db"
    asyncio.run(fill(new))
    new.with_name(new.name + ".key").write_text(KEY.hex() + "\n")
    old = tmp_path / "old.db"
    previous_schema_copy(new, old)
    return new, old


def test_a_file_of_the_previous_schema_migrates_with_every_row_and_reads_the_same(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    new, old = files
    every = "SELECT * FROM events ORDER BY id"
    before = table(old, every)
    states = sorted(r[0] for r in table(old, "SELECT state FROM events"))
    assert states == ["blocked", "dead", "inflight", "pending", "pending", "sent"]
    # doctor reads an old file without migrating it.
    assert any("migrates it to" in f for f in asyncio.run(findings(old)))
    assert table(old, "PRAGMA user_version") == [(OLD_VERSION,)]

    # `serve` opens it: the migration runs, in one transaction.
    asyncio.run(_open(old))
    assert table(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert table(old, every) == before == table(new, every)
    assert table(old, "SELECT COUNT(*) FROM event_data") == [(6,)]
    assert table(old, "SELECT id, state, attempts, lease_owner FROM event_queue ORDER BY id") == (
        table(new, "SELECT id, state, attempts, lease_owner FROM event_queue ORDER BY id")
    )
    assert table(old, "PRAGMA integrity_check") == [("ok",)]

    # Every read of the operator's side says the same of both files.
    for args in (
        ("queue", "stats", "--json"),
        ("queue", "stats"),
        ("queue", "list", "--json", "--reveal"),
        ("queue", "list", "--state", "dead"),
        ("queue", "export", "--state", "inflight"),
    ):
        read_new = command(capsys, *args, "--buffer", str(new))
        read_old = command(capsys, *args, "--buffer", str(old))
        assert read_old == read_new, args
        assert read_old[0] == 0 and "e" in read_old[1], args
    assert asyncio.run(findings(old)) == asyncio.run(findings(new))
    now = time.time()
    assert asyncio.run(dashboard(old, now)) == asyncio.run(dashboard(new, now))


async def _open(path: Path) -> None:
    box = await Outbox.open(path, Sealer(KEY))
    await box.close()


def test_a_migrated_file_is_written_as_a_new_one(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    new, old = files
    asyncio.run(_open(old))
    said = []
    for path in (new, old):
        # The dead letter goes back to pending, by hand; then Jane is erased.
        retried = command(capsys, "queue", "retry", "--state", "dead", "--buffer", str(path))
        forgot = command(
            capsys, "forget", "--email", "jane@example.com", "--buffer", str(path), "--json"
        )
        assert retried[0] == forgot[0] == 0, (retried, forgot)
        said.append((retried[1].replace(str(path), "<buffer>"), json.loads(forgot[1])))
    assert said[0] == said[1]
    assert said[1][1]["events"] > 0, said
    # Sealed anew (fresh nonces), and due or leased as of each command's own clock.
    every = (
        "SELECT id, pixel_id, event_name, event_id, event_time, source, payload, state, "
        "lease_owner, attempts, last_error, fbtrace_id, created_at, match_keys, twin, sources, "
        "received_keys, late, profile_keys, site FROM events ORDER BY id"
    )
    assert table(old, every) == table(new, every)

    async def serve(path: Path) -> list[tuple[str, int]]:
        box = await Outbox.open(path, Sealer(KEY))
        try:
            due = await box.claim("w2", limit=10, lease=60, now=time.time() + 10)
            await box.mark_sent([c.id for c in due], "w2", fbtrace_id="T2")
            return sorted((c.event_id, c.attempts) for c in due)
        finally:
            await box.close()

    assert (
        asyncio.run(serve(old))
        == asyncio.run(serve(new))
        == [
            ("e2", 1),
            ("e5", 1),
            ("e6", 1),
        ]
    )
    states = "SELECT event_id, state, attempts, lease_owner FROM events ORDER BY id"
    assert table(old, states) == table(new, states)
    # The results were written to the migrated file's queue rows.
    queued = "SELECT d.event_id, q.state FROM event_queue q JOIN event_data d USING (id)"
    assert dict(table(old, queued)) == {
        "e1": "sent",
        "e2": "sent",
        "e3": "blocked",
        "e4": "inflight",
        "e5": "sent",
        "e6": "sent",
    }


async def test_a_claim_and_its_result_leave_the_event_row_as_stored(tmp_path: Path) -> None:
    """What a lease and a send write is the narrow queue row; the event row stays as stored
    (its bytes, not only its values)."""
    box = await Outbox.open(tmp_path / "o.db", Sealer(KEY), group_commit_ms=0, durable=False)
    try:
        await box.add([new_event(PIXEL_1, "Lead", "x1")])
        row = "SELECT * FROM event_data"
        queue = "SELECT state, attempts, lease_owner, sent_at, fbtrace_id FROM event_queue"
        stored = table(box.path, row)
        (claimed,) = await box.claim("w", limit=10, lease=60, now=time.time() + 10)
        assert claimed.event_id == "x1" and claimed.attempts == 1
        assert claimed.event["user_data"]["client_ip_address"] == "203.0.113.7"
        assert table(box.path, queue) == [("inflight", 1, "w", None, None)]
        await box.mark_sent([claimed.id], "w", fbtrace_id="T")
        assert table(box.path, row) == stored
        ((state, attempts, owner, sent_at, trace),) = table(box.path, queue)
        assert (state, attempts, owner, trace) == ("sent", 1, None, "T") and sent_at
    finally:
        await box.close()


def test_writes_through_the_events_view_reach_both_tables(tmp_path: Path) -> None:
    """Ad-hoc SQL on `events` (an operator's, the tests') still inserts, updates, deletes."""
    path = tmp_path / "o.db"
    asyncio.run(_open(path))
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
            "next_attempt_at, created_at) VALUES ('p', 'Lead', 'v1', 1, 'api', '{}', 5, 6)"
        )
        conn.execute("UPDATE events SET state='dead', payload='{\"a\":1}' WHERE event_id='v1'")
    assert table(path, "SELECT event_id, payload, twin FROM event_data") == [("v1", '{"a":1}', 0)]
    assert table(path, "SELECT pixel_id, state, attempts, next_attempt_at FROM event_queue") == [
        ("p", "dead", 0, 5.0)
    ]
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM events")
    assert table(path, "SELECT COUNT(*) FROM event_data") == [(0,)]
    assert table(path, "SELECT COUNT(*) FROM event_queue") == [(0,)]


async def test_a_claim_and_a_result_are_each_their_own_transactions(tmp_path: Path) -> None:
    """No BEGIN and COMMIT trips around a claim or a sent-mark: each write is one statement
    that commits by itself, and another connection (worker) sees it at once."""
    box = await Outbox.open(tmp_path / "o.db", Sealer(KEY), group_commit_ms=0, durable=False)
    statements: list[str] = []
    try:
        await box.add([new_event(PIXEL_1, "Lead", "t1"), new_event(PIXEL_1, "Lead", "t2")])
        await box._conn.set_trace_callback(statements.append)
        claimed = await box.claim("w", limit=10, lease=60, now=time.time() + 10)
        assert sorted(c.event_id for c in claimed) == ["t1", "t2"]
        assert table(box.path, "SELECT DISTINCT state, lease_owner FROM event_queue") == [
            ("inflight", "w")
        ]
        await box.mark_sent([c.id for c in claimed], "w", fbtrace_id="T")
        assert table(box.path, "SELECT DISTINCT state, fbtrace_id FROM event_queue") == [
            ("sent", "T")
        ]
    finally:
        await box.close()
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == []
