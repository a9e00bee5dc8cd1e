"""Fuzzed bodies to `/events`, `/collect` and a webhook: never a 5xx, never a traceback.

The gateway runs as a subprocess in front of the fake site, logging to a file; hypothesis
sends JSON-shaped events (NaN, huge integers, lists where strings belong, odd URLs) and
raw bytes. Bounded: a fixed number of examples per endpoint, no example database.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, PIXEL, TOKEN, UA
from tests.fakes.processes import (
    HOST,
    clean_env,
    free_port,
    gateway_cmd,
    serve_args,
    spawn,
    stop_process,
    tail,
)
from tests.test_proxy_process import start_site

RULES = Path(__file__).parent / "fixtures" / "fuzz-rules"
HOOK_SECRET = b"fuzz-secret-not-a-real-one"
EXAMPLES = 120

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Target:
    port: int
    log: Path
    token: str
    event_id: str
    cookies: str
    answers: list[int]

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            self.answers.append(resp.status)
            return resp.status
        finally:
            conn.close()


def start(tmp: Path, upstream: str) -> tuple[Any, int, Path]:
    port = free_port()
    log = tmp / "gateway.log"
    args = serve_args(
        port,
        tmp / "outbox.db",
        "--upstream",
        upstream,
        "--rules",
        str(RULES),
        "--dry-run",
        "--pixel-id",
        PIXEL,
        "--access-token",
        TOKEN,
        "--api-key",
        API_KEY,
    )
    proc = spawn([*gateway_cmd(), *args], log, env=clean_env())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(log)
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", "/_capi/health")
            if conn.getresponse().status == 200:
                return proc, port, log
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    stop_process(proc)
    raise AssertionError(f"the gateway did not start:\n{tail(log)}")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    site = start_site(tmp / "upstream.log")
    try:
        proc, port, log = start(tmp, site.url)
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            conn.request("GET", "/html", headers={"User-Agent": UA, "Accept": "text/html"})
            resp = conn.getresponse()
            page = resp.read().decode()
            cookies = "; ".join(
                c.split(";", 1)[0] for c in resp.headers.get_all("Set-Cookie") or []
            )
            conn.close()
            token = re.search(r'data-token="([^"]+)"', page)
            event_id = re.search(r'data-event-id="([^"]+)"', page)
            assert token and event_id, page[:300]
            target = Target(port, log, token.group(1), event_id.group(1), cookies, [])
            yield target
        finally:
            stop_process(proc, grace=5)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]
        assert '"level": "error"' not in text, text[-4000:]
        assert not [s for s in target.answers if s >= 500], target.answers
    finally:
        stop_process(site.proc, grace=2)


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=10**300, max_value=10**400)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=30)
        | st.sampled_from(
            ["http://[", "https://x/?email=a@b.c", "", "home_delivery", "USD", "ü", "\udcff"]
        )
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def maybe(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=keys)


USER_DATA = maybe(
    {
        k: json_values()
        for k in ("em", "ph", "email", "phone", "fn", "external_id", "country", "fbp")
    }
)
CUSTOM_DATA = maybe(
    {
        k: json_values()
        for k in (
            "value",
            "currency",
            "contents",
            "delivery_category",
            "num_items",
            "content_ids",
            "score",
        )
    }
)


def events(event_ids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"event_id": event_ids},
        optional={
            "event_name": st.sampled_from(["Purchase", "Lead", "PageView", ""]) | json_values(),
            "event_time": st.integers() | json_values(),
            "user_data": USER_DATA | json_values(),
            "custom_data": CUSTOM_DATA | json_values(),
            "event_source_url": json_values(),
            "action_source": st.sampled_from(["website", "email", "x"]) | json_values(),
            "rule": json_values(),
            "data": json_values(),
            "fields": json_values(),
        },
    )


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"data": st.lists(events(json_values()), max_size=3) | json_values()}
    )
    | json_values(),
    raw=st.none() | st.binary(max_size=200),
)
def test_events_api_never_fails(target: Target, body: Any, raw: bytes | None) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status = target.post("/_capi/events", raw if raw is not None else dumps(body), headers)
    assert status < 500


@FUZZ
@given(
    events_=st.lists(events(st.text(min_size=1, max_size=12) | json_values()), max_size=3)
    | json_values(),
    url=json_values(),
    referrer=json_values(),
    referer=st.sampled_from(["", "http://[", "http://127.0.0.1/", "https://x/%zz"]),
    raw=st.none() | st.binary(max_size=200),
)
def test_collect_never_fails(
    target: Target, events_: Any, url: Any, referrer: Any, referer: str, raw: bytes | None
) -> None:
    beacon = {"token": target.token, "url": url, "referrer": referrer, "events": events_}
    origin = f"http://{HOST}:{target.port}"
    headers = {
        "Origin": origin,
        "User-Agent": UA,
        "Cookie": target.cookies,
        "Content-Type": "text/plain;charset=UTF-8",
    }
    if referer:
        headers["Referer"] = referer
    status = target.post("/_capi/collect", raw if raw is not None else dumps(beacon), headers)
    assert status < 500


@FUZZ
@given(
    payload=st.fixed_dictionaries(
        {"type": st.just("order.paid"), "id": json_values()},
        optional={
            "customer": maybe({"email": json_values(), "phone": json_values(), "id": json_values()})
            | json_values(),
            "amount": json_values(),
            "currency": json_values(),
        },
    )
    | json_values(),
    raw=st.none() | st.binary(max_size=200),
    form=st.booleans(),
)
def test_webhook_never_fails(target: Target, payload: Any, raw: bytes | None, form: bool) -> None:
    body = raw if raw is not None else dumps(payload)
    signature = hmac.new(HOOK_SECRET, body, hashlib.sha256).hexdigest()
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    headers = {"X-Sig": signature, "Content-Type": content_type}
    status = target.post("/_capi/hooks/fuzz", body, headers)
    assert status < 500


def test_a_lone_surrogate_in_a_hashed_webhook_field_is_not_a_500(target: Target) -> None:
    # Found by bench/bench_abuse.py: JSON's "\udcff" is no UTF-8, yet must still hash.
    body = b'{"type": "order.paid", "id": "s1", "customer": {"email": "\\udcff"}}'
    signature = hmac.new(HOOK_SECRET, body, hashlib.sha256).hexdigest()
    headers = {"X-Sig": signature, "Content-Type": "application/json"}
    assert target.post("/_capi/hooks/fuzz", body, headers) < 500
