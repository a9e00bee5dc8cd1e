"""`capi-gateway doctor` against the fake Graph API and real outbox files.

The command runs as a subprocess (exit codes and output are its contract) while the fake
Graph API serves in this test's event loop; the finer checks call `diagnose` directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.admin.data import coverage_hints
from gateway.commands.doctor import check_buffer, diagnose
from gateway.commands.findings import EXIT_OFFLINE, Finding, Level, exit_code
from gateway.commands.graphcheck import check_graph, clock_finding
from gateway.delivery.outbox import Outbox
from gateway.delivery.reads import reading as reader
from gateway.delivery.schema import SCHEMA_VERSION
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from gateway.settings import Settings
from tests.fakes.graph import FakeGraph, start_fake_graph
from tests.fakes.processes import CliResult, clean_env, cli_in_thread, free_port, gateway_cmd

PIXEL = "123456789012345"
TOKEN = "EAAB-doctor-secret-token-never-printed"
KEY = bytes(range(32))
UA = "Mozilla/5.0 (X11; Linux x86_64) Doctor/1.0"
EMAIL_HASH = hashlib.sha256(b"jane@example.com").hexdigest()


Result = CliResult


async def cli(*args: str, cwd: Path, **env: str) -> Result:
    """Run `capi-gateway ARGS` without blocking the loop the fake Graph API runs in."""
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd(),
        *args,
        cwd=cwd,
        env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def in_process(*args: str, cwd: Path, **env: str) -> Result:
    """`cli` in a thread of this process (the command runs its own event loop), with the
    environment `cli` gives the script: a spawned interpreter costs seconds of imports on a
    loaded machine. Every path the commands use is given, absolute (`cwd` is not applied)."""
    del cwd
    return await cli_in_thread(list(args), clean_env(**env))


def event(event_id: str, *, name: str = "Purchase", em: bool = True) -> NewEvent:
    payload: dict[str, Any] = {
        "event_name": name,
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"em": EMAIL_HASH} if em else {},
    }
    return NewEvent(
        pixel_id=PIXEL,
        event_name=name,
        event_id=event_id,
        event_time=payload["event_time"],
        payload=payload,
        clear={"client_ip_address": "203.0.113.7", "client_user_agent": UA},
        source="api",
    )


async def make_outbox(path: Path, *, sent: int = 3, dead: int = 0, blocked: int = 0) -> None:
    """A real outbox: `sent` delivered rows, then dead and blocked ones, key file beside."""
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    try:
        total = sent + dead + blocked
        await box.add([event(f"e{i}") for i in range(total)])
        claimed = await box.claim("w", limit=total, lease=60)
        ids = [c.id for c in claimed]
        await box.mark_sent(ids[:sent], "w", fbtrace_id="TRACE-OK")
        await box.mark_dead(ids[sent : sent + dead], "w", error="Invalid parameter", fbtrace_id="T")
        if blocked:
            await box.block_pixel(
                PIXEL,
                ids[sent + dead :],
                "w",
                token_fingerprint="fp",
                reason="Error validating access token (code 190)",
                fbtrace_id="TRACE-BLOCK",
            )
    finally:
        await box.close()
    path.with_name(path.name + ".key").write_text(KEY.hex() + "\n")
    path.with_name(path.name + ".key").chmod(0o600)


def settings(tmp_path: Path, graph_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pixel_id": [PIXEL],
        "access_token": TOKEN,
        "graph_url": graph_url,
        "buffer": tmp_path / "outbox.db",
        "events_api_keys": ["k" * 20],
    }
    values.update(overrides)
    return Settings.model_validate(values)


def doctor_args(tmp_path: Path, graph_url: str, *more: str) -> list[str]:
    return [
        "doctor",
        "--pixel-id",
        PIXEL,
        "--graph-url",
        graph_url,
        "--buffer",
        str(tmp_path / "outbox.db"),
        "--api-key",
        "k" * 20,
        *more,
    ]


def levels(findings: list[Finding], check: str) -> list[Level]:
    return [f.level for f in findings if f.check == check]


def messages(findings: list[Finding]) -> str:
    return "\n".join(f"{f.level.value} {f.check} {f.message} {f.fix or ''}" for f in findings)


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with start_fake_graph(token=TOKEN) as fake:
        yield fake


# -- the command ------------------------------------------------------------------------------


async def test_healthy_installation_exits_0(tmp_path: Path, graph: FakeGraph) -> None:
    await make_outbox(tmp_path / "outbox.db")
    result = await cli(*doctor_args(tmp_path, graph.url), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN)
    assert result.code == 0, result.text
    assert "the access token reaches it" in result.out
    assert "integrity ok" in result.out
    assert "3 pending" not in result.out and "0 pending" in result.out
    assert "within 5 s of Meta's" in result.out
    assert result.out.rstrip().endswith("No problem found.")
    assert TOKEN not in result.text
    # It asked Meta about the pixel with the token, and sent nothing.
    assert [(r.method, r.pixel_id, r.access_token) for r in graph.requests] == [
        ("GET", PIXEL, TOKEN)
    ]
    assert graph.events == []


async def test_refused_token_exits_1_with_the_fix(tmp_path: Path, graph: FakeGraph) -> None:
    result = await in_process(
        *doctor_args(tmp_path, graph.url),
        cwd=tmp_path,
        META_ACCESS_TOKEN="EAAB-revoked-token-also-never-printed",
    )
    assert result.code == 1, result.text
    (line,) = [ln for ln in result.out.splitlines() if ln.startswith("FAIL")]
    assert "pixel 1234****: Meta refused the token check" in line
    assert "code 190" in line and "fbtrace_id" in line
    assert "Generate access token" in result.out
    assert "1 problem(s) found." in result.out
    assert "EAAB-revoked" not in result.text


async def test_unreachable_graph_api_is_offline_exit_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await in_process(*doctor_args(tmp_path, url), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN)
    assert result.code == EXIT_OFFLINE == 3, result.text
    assert f"offline: could not reach {url} (connection refused" in result.out
    assert "FAIL" not in result.out
    assert "the token and the clock are unverified" in result.out


async def test_offline_does_not_hide_a_local_problem(tmp_path: Path) -> None:
    await make_outbox(tmp_path / "outbox.db", blocked=2)
    found = await diagnose(settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert any(f.level is Level.OFFLINE for f in found)
    assert any(f.level is Level.FAIL and "is blocked since" in f.message for f in found)
    assert exit_code(found) == 1


async def test_bad_config_file_names_the_key(tmp_path: Path, graph: FakeGraph) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('max_buffer_mb = "plenty"\n')
    result = await in_process(
        *doctor_args(tmp_path, graph.url, "--config", str(config)),
        cwd=tmp_path,
        META_ACCESS_TOKEN=TOKEN,
    )
    assert result.code == 2, result.text
    (line,) = result.err.strip().splitlines()
    assert line.startswith("capi-gateway: config error: ")
    assert str(config) in line and "max_buffer_mb" in line
    assert result.out == "" and "Traceback" not in result.err
    assert graph.requests == []


async def test_missing_token_is_a_problem_named_by_key(tmp_path: Path) -> None:
    found = await diagnose(settings(tmp_path, "http://127.0.0.1:1", access_token=None))
    (fail,) = [f for f in found if f.level is Level.FAIL]
    assert fail.check == "config"
    assert fail.message.startswith("access_token: pixel 123456789012345 has no access token")
    # No token, nothing to ask Meta: not "offline" either.
    assert levels(found, "graph") == [Level.NOTE]


async def test_corrupt_buffer_exits_1_with_recovery_steps(tmp_path: Path, graph: FakeGraph) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    await box.add([event(f"e{i}") for i in range(400)])
    await box.close()
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 6
    with path.open("r+b") as fh:
        # Scribble over pages in the middle (not the header): a torn or damaged disk.
        fh.seek(page * 2)
        fh.write(b"\xa5" * page * 3)
    result = await in_process(
        *doctor_args(tmp_path, graph.url), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 1, result.text
    (line,) = [ln for ln in result.out.splitlines() if ln.startswith("FAIL")]
    assert f"{path} is damaged or not an outbox" in line
    assert ".recover" in result.out
    assert "Traceback" not in result.err


async def test_not_a_database_file(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"this is a text file, not SQLite\n" * 100)
    (found,) = await check_buffer(settings(tmp_path, "http://x"), [])
    assert found.level is Level.FAIL
    assert "is damaged or not an outbox: file is not a database" in found.message


async def test_json_output(tmp_path: Path, graph: FakeGraph) -> None:
    await make_outbox(tmp_path / "outbox.db", dead=1)
    result = await in_process(
        *doctor_args(tmp_path, graph.url, "--json"), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["exit_code"] == 0
    by_level = {(f["check"], f["level"]) for f in report["findings"]}
    assert ("graph", "ok") in by_level and ("buffer", "warn") in by_level
    dead = next(f for f in report["findings"] if "dead letter" in f["message"])
    assert "queue retry --state dead" in dead["fix"]


# -- the outbox -------------------------------------------------------------------------------


async def test_dead_blocked_and_backlog(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await make_outbox(path, sent=1, dead=2, blocked=1)
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    await box.add([event("late")])
    await box.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE events SET created_at = ? WHERE event_id = 'late'", (time.time() - 7200,)
        )
    found = await check_buffer(settings(tmp_path, "http://127.0.0.1:1"), [])
    text = messages(found)
    assert "2 dead letter(s)" in text
    assert "pixel 1234**** is blocked since" in text and "TRACE-BLOCK" in text
    assert "the oldest undelivered event has waited 2.0 h" in text
    assert levels(found, "buffer") == [Level.OK, Level.WARN, Level.FAIL, Level.WARN]
    assert exit_code(found) == 1

    # A day-old backlog is no longer a warning: delivery is broken.
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE events SET created_at = ? WHERE event_id = 'late'", (time.time() - 90000,)
        )
    found = await check_buffer(settings(tmp_path, "http://127.0.0.1:1"), [])
    backlog = next(f for f in found if "oldest undelivered" in f.message)
    assert backlog.level is Level.FAIL


async def test_buffer_over_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await make_outbox(path, sent=50)
    with sqlite3.connect(path) as db:
        used = db.execute(
            "SELECT (page_count - freelist_count) * page_size "
            "FROM pragma_page_count, pragma_freelist_count, pragma_page_size"
        ).fetchone()[0]
    mib = used / 1048576
    found = await check_buffer(settings(tmp_path, "http://x", max_buffer_mb=mib * 0.9), [])
    assert any(f.level is Level.FAIL and "over max_buffer_mb" in f.message for f in found)
    found = await check_buffer(settings(tmp_path, "http://x", max_buffer_mb=mib / 0.85), [])
    assert any(f.level is Level.WARN and "85% of max_buffer_mb" in f.message for f in found)
    found = await check_buffer(settings(tmp_path, "http://x", max_buffer_mb=mib * 2), [])
    assert not [f for f in found if "max_buffer_mb" in f.message], messages(found)


async def test_missing_key_for_sealed_events_and_loose_key_mode(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await make_outbox(path, sent=1, blocked=0)
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    await box.add([event("waiting")])
    await box.close()
    key = path.with_name("outbox.db.key")
    key.chmod(0o644)
    found = await check_buffer(settings(tmp_path, "http://x"), [])
    assert any(f.level is Level.WARN and "readable by other users" in f.message for f in found)
    key.unlink()
    found = await check_buffer(settings(tmp_path, "http://x"), [])
    (fail,) = [f for f in found if f.level is Level.FAIL]
    assert "no encryption key" in fail.message and "1 undelivered" in fail.message


async def test_only_reads_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    # Missing: reported, not created.
    found = await check_buffer(settings(tmp_path, "http://x"), [])
    assert [f.level for f in found] == [Level.NOTE] and not path.exists()
    # An older schema: reported, not migrated.
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
        db.execute("PRAGMA user_version = 1")
    found = await check_buffer(settings(tmp_path, "http://x"), [])
    assert f"migrates it to {SCHEMA_VERSION}" in messages(found)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    # Newer than this release, or another application's database: refused.
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    (found_one,) = await check_buffer(settings(tmp_path, "http://x"), [])
    assert found_one.level is Level.FAIL and "newer than this release" in found_one.message
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")
    (found_one,) = await check_buffer(settings(tmp_path, "http://x"), [])
    assert "another application's tables" in found_one.message


async def test_a_new_buffer_needs_a_writable_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    (found,) = await check_buffer(settings(tmp_path, "http://x", buffer=not_a_dir / "o.db"), [])
    assert found.level is Level.FAIL and f"{not_a_dir} is not a directory" in found.message
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: every directory is writable")
        found_all = await check_buffer(settings(tmp_path, "http://x", buffer=locked / "o.db"), [])
        (fail,) = found_all
        assert fail.level is Level.FAIL and "not writable by this user" in fail.message
    finally:
        locked.chmod(0o700)


async def test_prints_the_dashboards_coverage_hints(tmp_path: Path, graph: FakeGraph) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=0, durable=False)
    # Purchases without an email: the dashboard says where to get one.
    await box.add([event(f"p{i}", em=False) for i in range(10)])
    await box.close()
    path.with_name("outbox.db.key").write_text(KEY.hex())
    path.with_name("outbox.db.key").chmod(0o600)
    async with reader(path) as conn:
        expected = [str(h) for h in await coverage_hints(conn, [], rules_dir=None)]
    assert expected, "the dashboard has a hint for this buffer"
    found = await diagnose(settings(tmp_path, graph.url))
    assert [f.message for f in found if f.level is Level.HINT] == expected
    result = await in_process(
        *doctor_args(tmp_path, graph.url), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 0, result.text
    assert f"hint     coverage {expected[0]}" in result.out


# -- rules and config -------------------------------------------------------------------------


async def test_rule_files_are_loaded_as_serve_would(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text(
        '[[rule]]\nname = "thanks"\nevent = "Lead"\npath = "/thanks"\n'
    )
    found = await diagnose(settings(tmp_path, "http://127.0.0.1:1", rules=rules))
    (ok,) = [f for f in found if f.check == "rules"]
    assert ok.level is Level.OK and "1 rule(s)" in ok.message
    (rules / "broken.toml").write_text('[[rule]]\nname = "oops"\nevent = "Lead"\npathh = "/x"\n')
    found = await diagnose(settings(tmp_path, "http://127.0.0.1:1", rules=rules))
    (bad,) = [f for f in found if f.check == "rules"]
    assert bad.level is Level.FAIL
    assert "broken.toml" in bad.message and "pathh" in bad.message


async def test_test_event_code_in_production_is_a_warning(tmp_path: Path, graph: FakeGraph) -> None:
    found = await diagnose(settings(tmp_path, graph.url, test_event_code="TEST1"))
    (warn,) = [f for f in found if f.level is Level.WARN]
    assert "test_event_code is set" in warn.message
    assert exit_code(found) == 0


# -- the clock --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "level"), [(0.0, Level.OK), (30.0, Level.WARN), (-600.0, Level.FAIL)]
)
async def test_clock_against_the_date_of_metas_answer(
    tmp_path: Path, offset: float, level: Level
) -> None:
    async def pixel(request: web.Request) -> web.Response:
        date = formatdate(time.time() + offset, usegmt=True)
        return web.json_response({"id": request.match_info["pixel"]}, headers={"Date": date})

    app = web.Application()
    app.router.add_get("/{version}/{pixel}", pixel)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        found = await check_graph(settings(tmp_path, f"http://127.0.0.1:{port}"))
    finally:
        await runner.cleanup()
    (clock,) = [f for f in found if f.check == "clock"]
    assert clock.level is level, clock
    if offset:
        side = "behind" if offset > 0 else "ahead of"
        assert f"{abs(offset):.0f} s {side} Meta's" in clock.message
        assert "time synchronisation" in (clock.fix or "")


def test_unreadable_date_header_is_not_a_problem() -> None:
    assert clock_finding("yesterday-ish", time.time()).level is Level.NOTE
