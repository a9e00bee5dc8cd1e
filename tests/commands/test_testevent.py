"""`capi-gateway send-test-event` against the fake Graph API, as a subprocess."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.commands.testevent import TEST_EXTERNAL_ID, build_event
from gateway.settings import PARTNER_AGENT, Settings
from tests.commands.test_doctor import cli, in_process
from tests.fakes.graph import FakeGraph, start_fake_graph
from tests.fakes.processes import free_port

PIXEL = "123456789012345"
PIXEL_2 = "543210987654321"
TOKEN = "EAAB-test-event-secret-token-never-printed"


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with start_fake_graph(token=TOKEN) as fake:
        yield fake


def args(graph_url: str, *more: str) -> list[str]:
    return ["send-test-event", "--pixel-id", PIXEL, "--graph-url", graph_url, *more]


async def test_sends_one_pageview_in_test_mode_and_prints_metas_answer(
    tmp_path: Path, graph: FakeGraph
) -> None:
    result = await cli(
        *args(graph.url, "--test-event-code", "TEST4242"), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 0, result.text
    (request,) = graph.requests
    assert request.method == "POST" and request.pixel_id == PIXEL
    assert request.access_token == TOKEN
    assert request.body is not None and request.body["test_event_code"] == "TEST4242"
    (sent,) = request.data
    assert sent["event_name"] == "PageView" and sent["action_source"] == "website"
    assert abs(sent["event_time"] - time.time()) < 30
    user_data = sent["user_data"]
    assert user_data["external_id"] == hashlib.sha256(TEST_EXTERNAL_ID.encode()).hexdigest()
    assert user_data["client_user_agent"].startswith(PARTNER_AGENT)
    # What Meta answered is what the command printed.
    trace = re.search(r"fbtrace_id=(\S+)", result.out)
    assert trace is not None
    assert "events_received=1" in result.out
    assert f"PageView {sent['event_id']} under Test events (code TEST4242)" in result.out
    assert TOKEN not in result.text
    # Nothing went to the outbox: the command does not create one.
    assert not (tmp_path / "capi-gateway.db").exists()


async def test_flag_code_wins_over_the_configured_one_for_every_pixel(
    tmp_path: Path, graph: FakeGraph
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[pixels]]\nid = "{PIXEL}"\ntest_event_code = "FROMFILE"\n[[pixels]]\nid = "{PIXEL_2}"\n'
    )
    result = await in_process(
        "send-test-event",
        "--config",
        str(config),
        "--graph-url",
        graph.url,
        cwd=tmp_path,
        META_ACCESS_TOKEN=TOKEN,
        META_TEST_EVENT_CODE="FROMENV",
    )
    assert result.code == 0, result.text
    codes = {r.pixel_id: (r.body or {}).get("test_event_code") for r in graph.requests}
    assert codes == {PIXEL: "FROMFILE", PIXEL_2: "FROMENV"}
    assert result.out.count("events_received=1") == 2

    graph.reset()
    result = await in_process(
        "send-test-event",
        "--config",
        str(config),
        "--graph-url",
        graph.url,
        "--test-event-code",
        "FLAG",
        cwd=tmp_path,
        META_ACCESS_TOKEN=TOKEN,
    )
    assert result.code == 0, result.text
    assert {(r.body or {}).get("test_event_code") for r in graph.requests} == {"FLAG"}


async def test_refuses_to_send_without_a_test_event_code(tmp_path: Path, graph: FakeGraph) -> None:
    result = await in_process(*args(graph.url), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN)
    assert result.code == 2, result.text
    (line,) = result.err.strip().splitlines()
    assert line.startswith("capi-gateway: config error: test_event_code: ")
    assert "--test-event-code" in line
    assert graph.requests == []


async def test_refused_token_prints_metas_error_and_the_fix(
    tmp_path: Path, graph: FakeGraph
) -> None:
    result = await in_process(
        *args(graph.url, "--test-event-code", "T1"),
        cwd=tmp_path,
        META_ACCESS_TOKEN="EAAB-wrong-token-never-printed",
    )
    assert result.code == 1, result.text
    assert "pixel 1234****: Meta refused it: Error validating access token" in result.out
    assert re.search(r"code 190/463, fbtrace_id \S+", result.out)
    assert "fix: The token is invalid, expired or revoked" in result.out
    assert "EAAB-wrong" not in result.text


async def test_meta_rejecting_the_event_prints_its_message(
    tmp_path: Path, graph: FakeGraph
) -> None:
    graph.fail_next(status=400, code=100, subcode=2804003, message="Invalid parameter - bad url")
    result = await in_process(
        *args(graph.url, "--test-event-code", "T1"), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 1, result.text
    assert "Meta refused it: Invalid parameter - bad url (code 100/2804003, fbtrace_id" in (
        result.out
    )


async def test_unreachable_graph_api_is_offline(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await in_process(
        *args(url, "--test-event-code", "T1"), cwd=tmp_path, META_ACCESS_TOKEN=TOKEN
    )
    assert result.code == 3, result.text
    assert result.out.startswith(f"offline: could not reach {url} (connection refused")
    # The same fix line as doctor's offline finding.
    assert "\n  fix: check DNS, the firewall or an egress proxy for this host" in result.out


def test_the_event_passes_the_events_pipeline() -> None:
    event = build_event(Settings(dry_run=True), now=1_700_000_000)
    assert event["event_time"] == 1_700_000_000
    assert event["event_source_url"].startswith("https://")
    assert set(event["user_data"]) == {"external_id", "client_user_agent"}
