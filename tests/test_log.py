"""Structured logs and request ids: JSON lines with the request's id, never a token."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.log import (
    REQUEST_ID_HEADER,
    JsonFormatter,
    TextFormatter,
    _RequestIdFilter,
    request_id,
    scrub,
    valid_request_id,
)
from tests.conftest import GatewayFactory, make_settings
from tests.fakes.graph import FakeGraph
from tests.fakes.processes import (
    ROOT,
    free_port,
    gateway_cmd,
    serve_args,
    spawn,
    stop_process,
    tail,
    wait_healthy,
)
from tests.fakes.processes import Gateway as GatewayProcess
from tests.fakes.upstream import run_gateway, start_upstream

GENERATED = re.compile(r"[0-9a-f]{32}")
TOKEN = "EAABlogtokenthatmustneverappear0123456789"


# -- request ids on the gateway's responses ---------------------------------------------------


async def test_gateway_endpoints_answer_with_a_request_id(gateway: GatewayFactory) -> None:
    client = await gateway()
    first = await client.get("/_capi/health")
    second = await client.get("/_capi/health")
    ids = [first.headers[REQUEST_ID_HEADER], second.headers[REQUEST_ID_HEADER]]
    assert all(GENERATED.fullmatch(i) for i in ids) and ids[0] != ids[1]
    # Errors the gateway makes carry one too.
    missing = await client.get("/_capi/nope")
    assert missing.status == 404 and GENERATED.fullmatch(missing.headers[REQUEST_ID_HEADER])
    refused = await client.post("/_capi/events", json={"data": []})
    assert refused.status == 401 and GENERATED.fullmatch(refused.headers[REQUEST_ID_HEADER])


async def test_a_trusted_proxys_request_id_is_kept(gateway: GatewayFactory) -> None:
    # The test client connects from 127.0.0.1, trusted by default.
    client = await gateway()
    resp = await client.get("/_capi/health", headers={REQUEST_ID_HEADER: "lb-7f3a.19:2"})
    assert resp.headers[REQUEST_ID_HEADER] == "lb-7f3a.19:2"
    # Anything but a plain identifier is replaced: it would be written into every log line.
    for bad in ("two words", "x" * 129, "a\u00e9b", "jane@example.com"):
        resp = await client.get("/_capi/health", headers={REQUEST_ID_HEADER: bad})
        assert GENERATED.fullmatch(resp.headers[REQUEST_ID_HEADER]), bad


async def test_a_trusted_proxy_seen_as_ipv4_mapped_keeps_its_request_id(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    # A dual-stack listener sees the loopback proxy as ::ffff:127.0.0.1: still trusted.
    settings = make_settings(tmp_path, fake_graph.url)
    async with run_gateway(settings, dual_stack=True) as gw:
        url = gw.url + "/_capi/health"
        async with gw.session.get(url, headers={REQUEST_ID_HEADER: "lb-mapped.1"}) as resp:
            assert resp.headers[REQUEST_ID_HEADER] == "lb-mapped.1"
    settings = make_settings(tmp_path, fake_graph.url, trusted_proxies=["10.0.0.0/8"])
    async with run_gateway(settings, dual_stack=True) as gw:
        url = gw.url + "/_capi/health"
        async with gw.session.get(url, headers={REQUEST_ID_HEADER: "lb-mapped.1"}) as resp:
            assert GENERATED.fullmatch(resp.headers[REQUEST_ID_HEADER])


async def test_an_untrusted_peers_request_id_is_ignored(gateway: GatewayFactory) -> None:
    client = await gateway(trusted_proxies=["10.0.0.0/8"])
    resp = await client.get("/_capi/health", headers={REQUEST_ID_HEADER: "forged-by-client"})
    assert GENERATED.fullmatch(resp.headers[REQUEST_ID_HEADER])


async def test_site_responses_pass_unchanged_gateway_errors_carry_the_id(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with start_upstream() as site:
        settings = make_settings(tmp_path, fake_graph.url, upstream=site.url, inject=False)
        async with run_gateway(settings) as front:
            async with front.session.get(f"{front.url}/echo") as resp:
                assert resp.status == 200
                assert REQUEST_ID_HEADER not in resp.headers
            # A trusted proxy's id reaches the site like any end-to-end header.
            async with front.session.get(
                f"{front.url}/echo", headers={REQUEST_ID_HEADER: "edge-1"}
            ) as resp:
                seen = dict((await resp.json())["headers"])
                assert seen[REQUEST_ID_HEADER] == "edge-1"
                assert REQUEST_ID_HEADER not in resp.headers
    closed = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path, fake_graph.url, upstream=closed)
    async with run_gateway(settings) as front, front.session.get(f"{front.url}/page") as resp:
        assert resp.status == 502
        assert GENERATED.fullmatch(resp.headers[REQUEST_ID_HEADER])


# -- the log lines ----------------------------------------------------------------------------


@pytest.fixture
def log_process(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gw in started:
        stop_process(gw.proc, grace=5)


async def test_log_lines_are_json_with_the_request_id(
    tmp_path: Path, log_process: list[GatewayProcess]
) -> None:
    port = free_port()
    closed = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "gateway.log"
    cmd = [
        *gateway_cmd(),
        *serve_args(port, tmp_path / "outbox.db", "--upstream", closed, "--dry-run"),
        "--access-token",
        TOKEN,
        "--log-format",
        "json",
    ]
    gw = GatewayProcess(spawn(cmd, log, cwd=ROOT), f"http://127.0.0.1:{port}", log)
    log_process.append(gw)
    async with aiohttp.ClientSession() as session:
        # Its upstream is closed on purpose: live, never ready.
        await wait_healthy(gw, session, live=True)
        async with session.get(f"{gw.url}/shop?email=jane@example.com") as resp:
            assert resp.status == 502
            generated = resp.headers[REQUEST_ID_HEADER]
        async with session.get(
            f"{gw.url}/cart", headers={REQUEST_ID_HEADER: "from-the-proxy-42"}
        ) as resp:
            assert resp.headers[REQUEST_ID_HEADER] == "from-the-proxy-42"
    stop_process(gw.proc, grace=5)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "pid", "message"} <= set(records[0])
    unreachable = [r for r in records if r["message"].startswith("Upstream unreachable")]
    assert [r.get("request_id") for r in unreachable] == [generated, "from-the-proxy-42"], tail(log)
    # Records outside a request have none.
    assert "request_id" not in next(r for r in records if "listening on" in r["message"])
    text = log.read_text()
    assert TOKEN not in text and "jane@example.com" not in text


# -- formatters -------------------------------------------------------------------------------


def _record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _emit(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    handler.handle(record)
    return stream.getvalue().rstrip("\n")


def test_json_lines_carry_the_current_request_id_and_event_ids() -> None:
    token = request_id.set("req-1")
    try:
        line = _emit(JsonFormatter(), _record("Stored %d event(s).", 2, event_ids=["a", "b"]))
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "Stored 2 event(s)."
    assert entry["request_id"] == "req-1" and entry["event_ids"] == ["a", "b"]
    assert "request_id" not in json.loads(_emit(JsonFormatter(), _record("Idle.")))


def test_text_lines_name_the_request() -> None:
    token = request_id.set("req-2")
    try:
        line = _emit(TextFormatter(), _record("Upstream unreachable.", event_id="e1"))
    finally:
        request_id.reset(token)
    assert line.endswith("gateway.test: Upstream unreachable. [request_id=req-2 event_id=e1]")


@pytest.mark.parametrize(
    "message",
    [
        f"GET https://graph.facebook.com/v26.0/1/events?access_token={TOKEN}&x=1 failed",
        f"appsecret_proof={TOKEN}",
        f"Authorization: Bearer {TOKEN}",
        f"token {TOKEN} refused",
    ],
)
def test_tokens_are_masked_even_when_a_caller_slips(message: str) -> None:
    assert TOKEN not in scrub(message)
    assert TOKEN not in _emit(JsonFormatter(), _record("%s", message))
    assert TOKEN not in _emit(TextFormatter(), _record("%s", message))


def test_exceptions_are_masked_too() -> None:
    try:
        raise RuntimeError(f"request failed: access_token={TOKEN}")
    except RuntimeError:
        record = logging.LogRecord(
            "gateway.test", logging.ERROR, __file__, 1, "Failed.", (), sys.exc_info()
        )
    assert TOKEN not in json.loads(_emit(JsonFormatter(), record))["exception"]


def test_request_id_validation() -> None:
    assert valid_request_id(" abc-123 ") == "abc-123"
    assert valid_request_id("4bf92f3577b34da6a3ce929d0e0e4736") is not None
    assert valid_request_id("") is None and valid_request_id(None) is None
    assert valid_request_id("a\nb") is None
