"""`POST /_capi/hooks/<hook>`: the shipped examples (rules/stripe.toml, booking-webhook.toml,
crm.toml) fed recorded payloads (tests/fixtures/webhooks/) signed in the test — Stripe's
header by the official `stripe` package, the HMAC schemes with `hmac` directly — and the
handler's bounds: signatures, secrets, sizes, unmatched payloads, malformed input.

Stitching to a visit through the proxy is in test_stitching.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stripe import WebhookSignature

from gateway.edge.appkeys import RUNTIME
from tests.conftest import GatewayFactory, wait_for
from tests.fakes.graph import FakeGraph

RULES = Path(__file__).parents[2] / "rules"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"

STRIPE_SECRET = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc0123456789ab"
STRIPE_NEXT = "whsec_test_rotated_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
BOOKING_SECRET = "booking-secret-3f1d0c8e2b7a"
CRM_SECRET = "crm-secret-61c2b9a04d7e"
ENV = {
    "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    "BOOKING_WEBHOOK_SECRET": BOOKING_SECRET,
    "CRM_WEBHOOK_SECRET": CRM_SECRET,
}

Client = TestClient[Any, Any]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- recorded payloads and their signatures -------------------------------------------------


def fixture(name: str) -> dict[str, Any]:
    """A recorded payload from tests/fixtures/webhooks/."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def stripe_event(
    order_id: str = "A1B2C3D4", *, created: int | None = None, **session: Any
) -> dict[str, Any]:
    """The recorded checkout.session.completed, for `order_id`, created now."""
    event = fixture("stripe-checkout-session-completed.json")
    event["created"] = int(time.time()) if created is None else created
    obj = event["data"]["object"]
    obj["metadata"]["order_id"] = order_id
    obj["client_reference_id"] = order_id
    obj.update(session)
    return event


def body_of(payload: Any) -> bytes:
    # Non-ASCII kept as UTF-8, as Stripe sends it ("Torstraße"): signatures are over bytes.
    return json.dumps(payload, ensure_ascii=False).encode()


def stripe_headers(
    body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """A Stripe-Signature made by Stripe's own library."""
    stamp = int(time.time()) if timestamp is None else timestamp
    header = WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=stamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"}


def booking_headers(body: bytes, secret: str = BOOKING_SECRET) -> dict[str, str]:
    """`X-Booking-Signature: sha256=<hex HMAC-SHA256 of the body>`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Booking-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def crm_headers(
    body: bytes, secret: str = CRM_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """`X-CRM-Signature: base64(HMAC-SHA256("<timestamp>.<body>"))` and `X-CRM-Timestamp`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).digest()
    return {
        "X-CRM-Signature": base64.b64encode(digest).decode(),
        "X-CRM-Timestamp": stamp,
        "Content-Type": "application/json",
    }


def booking_event(booking_id: str = "B7F3A1", *, occurred: int | None = None) -> dict[str, Any]:
    """The recorded booking.confirmed, for `booking_id`, that happened at `occurred`."""
    event = fixture("booking-confirmed.json")
    when = int(time.time()) - 60 if occurred is None else occurred
    event["occurred_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    event["booking"]["id"] = booking_id
    return event


# -- the buffer, read as it is on disk ------------------------------------------------------


def rows(client: Client) -> list[sqlite3.Row]:
    """Outbox rows (state, source, rule, event_id, ...) straight from the buffer file."""
    with contextlib.closing(sqlite3.connect(client.server.app[RUNTIME].settings.buffer)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM events ORDER BY id"))


async def metric(client: Client, name: str, **labels: str) -> float:
    """One sample of /_capi/metrics (0 when absent)."""
    resp = await client.get("/_capi/metrics")
    assert resp.status == 200
    text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{"):
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == wanted:
                return float(value)
    return 0.0


def graph_events(fake: FakeGraph, event_id: str) -> list[dict[str, Any]]:
    return [e for e in fake.events if e.get("event_id") == event_id]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples' secrets in the environment (read when the gateway loads its rules)."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET_NEXT", raising=False)


@pytest.fixture
async def hooks(gateway: GatewayFactory, secrets: None) -> Client:
    """A gateway with the shipped rule files and their secrets set."""
    return await gateway(rules=RULES)


# -- Stripe ---------------------------------------------------------------------------------


async def test_stripe_checkout_becomes_a_purchase(hooks: Client, fake_graph: FakeGraph) -> None:
    created = int(time.time()) - 30
    body = body_of(stripe_event("A1B2C3D4", created=created))
    resp = await hooks.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200
    assert await resp.json() == {
        "received": True,
        "events": [
            {
                "webhook": "stripe-purchase",
                "event_id": "purchase-A1B2C3D4",
                "stitched": False,
                "outcome": "new",
                "duplicate": False,
            }
        ],
    }
    await wait_for(lambda: bool(graph_events(fake_graph, "purchase-A1B2C3D4")))
    (event,) = graph_events(fake_graph, "purchase-A1B2C3D4")
    assert event["event_name"] == "Purchase"
    assert event["event_time"] == created
    assert event["custom_data"] == {"order_id": "A1B2C3D4", "value": 19.9, "currency": "EUR"}
    assert event["user_data"] == {"em": sha("ann@example.com")}
    # No visit to complete it: a backend event, not a website one without a browser.
    assert event["action_source"] == "system_generated"
    (row,) = rows(hooks)
    assert (row["source"], row["rule"]) == ("webhook", "stripe-purchase")


async def test_stripe_retries_are_one_purchase(hooks: Client, fake_graph: FakeGraph) -> None:
    body = body_of(stripe_event("RETRY1"))
    answers = []
    for _ in range(4):
        resp = await hooks.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
        assert resp.status == 200
        item = (await resp.json())["events"][0]
        answers.append((item["duplicate"], item["outcome"]))
    # The first is stored; the retries merge into it until it is sent, then come late.
    assert answers[0] == (False, "new")
    assert all(dup and outcome in ("merged", "late") for dup, outcome in answers[1:])
    await wait_for(lambda: bool(graph_events(fake_graph, "purchase-RETRY1")))
    await asyncio.sleep(0.3)
    assert len(graph_events(fake_graph, "purchase-RETRY1")) == 1
    assert len(rows(hooks)) == 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"payment_status": "unpaid"}, "an unpaid (delayed) payment"),
        ({"type": "customer.created"}, "another event type"),
    ],
)
async def test_a_payload_no_mapping_wants_is_acknowledged_and_counted(
    hooks: Client, change: dict[str, Any], why: str
) -> None:
    event = stripe_event("UNMATCHED")
    if "type" in change:
        event.update(change)
    else:
        event["data"]["object"].update(change)
    body = body_of(event)
    before = await metric(
        hooks, "capi_gateway_webhook_deliveries_total", hook="stripe", outcome="unmatched"
    )
    for _ in range(2):
        resp = await hooks.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
        # 2xx so Stripe stops retrying something we will never map.
        assert resp.status == 200, why
        assert await resp.json() == {"received": True, "events": []}
    after = await metric(
        hooks, "capi_gateway_webhook_deliveries_total", hook="stripe", outcome="unmatched"
    )
    assert after - before == 2
    assert rows(hooks) == []


@pytest.mark.parametrize(
    "tamper",
    ["wrong secret", "changed body", "no header", "other scheme only", "garbage"],
)
async def test_a_bad_signature_is_401_and_stores_nothing(
    hooks: Client, fake_graph: FakeGraph, tamper: str
) -> None:
    body = body_of(stripe_event("FORGED1"))
    headers = stripe_headers(body)
    sent = body
    if tamper == "wrong secret":
        headers = stripe_headers(body, secret="whsec_someone_else")
    elif tamper == "changed body":
        sent = body.replace(b'"amount_total": 1990', b'"amount_total": 199000')
        assert sent != body
    elif tamper == "no header":
        del headers["Stripe-Signature"]
    elif tamper == "other scheme only":
        headers["Stripe-Signature"] = headers["Stripe-Signature"].replace("v1=", "v0=")
    else:
        headers["Stripe-Signature"] = "t=oops,v1=zz"
    resp = await hooks.post("/_capi/hooks/stripe", data=sent, headers=headers)
    assert resp.status == 401
    answer = await resp.json()
    assert answer["error"] == "invalid signature"
    assert STRIPE_SECRET not in json.dumps(answer)
    assert rows(hooks) == []
    assert (
        await metric(
            hooks, "capi_gateway_webhook_deliveries_total", hook="stripe", outcome="unauthorized"
        )
        == 1
    )


async def test_stripe_timestamp_tolerance(hooks: Client) -> None:
    now = int(time.time())
    body = body_of(stripe_event("TOL1"))
    # The rule allows 5 minutes either way (tolerance = "5m").
    for stamp, status in ((now - 400, 401), (now + 400, 401), (now - 240, 200)):
        headers = stripe_headers(body, timestamp=stamp)
        resp = await hooks.post("/_capi/hooks/stripe", data=body, headers=headers)
        assert resp.status == status, stamp - now
        if status == 401:
            assert "tolerance" in (await resp.json())["detail"]
    assert [r["event_id"] for r in rows(hooks)] == ["purchase-TOL1"]


async def test_a_rotated_secret_is_accepted_while_both_are_set(
    gateway: GatewayFactory, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_NEXT", STRIPE_NEXT)
    client = await gateway(rules=RULES)
    for order, secret, status in (
        ("ROT1", STRIPE_SECRET, 200),
        ("ROT2", STRIPE_NEXT, 200),
        ("ROT3", "whsec_neither_of_them", 401),
    ):
        body = body_of(stripe_event(order))
        resp = await client.post(
            "/_capi/hooks/stripe", data=body, headers=stripe_headers(body, secret=secret)
        )
        assert resp.status == status, order
    # Stripe signs with both secrets during a roll: one v1 per secret in one header.
    body = body_of(stripe_event("ROT4"))
    stamp = int(time.time())
    both = ",".join(
        [f"t={stamp}"]
        + [
            "v1=" + hmac.new(s.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            for s in ("whsec_retired_one", STRIPE_NEXT)
        ]
    )
    resp = await client.post(
        "/_capi/hooks/stripe",
        data=body,
        headers={"Stripe-Signature": both, "Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert [r["event_id"] for r in rows(client)] == [
        "purchase-ROT1",
        "purchase-ROT2",
        "purchase-ROT4",
    ]


async def test_a_hook_whose_secret_is_unset_answers_503(
    gateway: GatewayFactory, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    client = await gateway(rules=RULES)
    (warning,) = client.server.app[RUNTIME].rules.warnings()
    assert "'stripe'" in warning and "STRIPE_WEBHOOK_SECRET" in warning
    body = body_of(stripe_event("NOSECRET"))
    resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    # 503, not 401: Stripe keeps retrying until the operator sets the secret.
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert "STRIPE_WEBHOOK_SECRET" in (await resp.json())["detail"]
    assert rows(client) == []
    # The other hooks are not affected.
    booking = body_of(booking_event())
    resp = await client.post(
        "/_capi/hooks/bookings", data=booking, headers=booking_headers(booking)
    )
    assert resp.status == 200


async def test_unknown_hook_is_404(hooks: Client) -> None:
    resp = await hooks.post("/_capi/hooks/paypal", data=b"{}")
    assert resp.status == 404
    assert (await resp.json())["error"] == "unknown hook"


async def test_a_full_outbox_answers_503_so_the_provider_retries(
    gateway: GatewayFactory, secrets: None
) -> None:
    client = await gateway(rules=RULES, max_buffer_mb=0.01)
    body = body_of(stripe_event("FULL1"))
    resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 503
    assert resp.headers["Retry-After"]


# -- payload size ---------------------------------------------------------------------------


async def test_payloads_over_webhook_max_bytes_are_413(
    gateway: GatewayFactory, secrets: None
) -> None:
    client = await gateway(rules=RULES, webhook_max_bytes=4096)
    event = stripe_event("BIG1")
    event["data"]["object"]["metadata"]["note"] = "x" * 5000
    body = body_of(event)
    resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the bound must hold while reading, not only on the header.
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    resp = await client.post("/_capi/hooks/stripe", data=chunks(), headers=stripe_headers(body))
    assert resp.status == 413
    assert rows(client) == []
    small = body_of(stripe_event("SMALL1"))
    assert len(small) < 4096
    resp = await client.post("/_capi/hooks/stripe", data=small, headers=stripe_headers(small))
    assert resp.status == 200


async def test_a_large_payload_arriving_in_pieces_is_read_whole(hooks: Client) -> None:
    # Stripe payloads with many line items or metadata run to hundreds of KB and reach us
    # in many TCP reads; the signature covers all of them.
    event = stripe_event("PIECES1")
    event["data"]["object"]["metadata"]["padding"] = "p" * 300_000
    body = body_of(event)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]
            await asyncio.sleep(0.001)

    resp = await hooks.post("/_capi/hooks/stripe", data=chunks(), headers=stripe_headers(body))
    assert resp.status == 200, await resp.text()
    assert [r["event_id"] for r in rows(hooks)] == ["purchase-PIECES1"]


# -- the booking system (HMAC, hex, "sha256=" prefix) ---------------------------------------


async def test_booking_webhook_becomes_a_schedule_in_idr(
    hooks: Client, fake_graph: FakeGraph
) -> None:
    occurred = int(time.time()) - 90
    body = body_of(booking_event("B7F3A1", occurred=occurred))
    resp = await hooks.post("/_capi/hooks/bookings", data=body, headers=booking_headers(body))
    assert resp.status == 200
    assert (await resp.json())["events"][0]["event_id"] == "schedule-B7F3A1"
    await wait_for(lambda: bool(graph_events(fake_graph, "schedule-B7F3A1")))
    (sent,) = graph_events(fake_graph, "schedule-B7F3A1")
    assert sent["event_name"] == "Schedule"
    assert sent["event_time"] == occurred
    assert sent["custom_data"] == {
        "value": 1600000,
        "currency": "IDR",
        "contents": [
            {"id": "fitting", "quantity": 1, "item_price": 350000},
            {"id": "tailoring", "quantity": 1, "item_price": 1250000},
        ],
        "booking_id": "B7F3A1",
    }
    assert sent["user_data"] == {
        "em": sha("budi.santoso@example.co.id"),
        "ph": sha("6281234567890"),
        "country": sha("id"),  # the mapping's default: the customer is in Indonesia
    }
    # A redelivery is the same Schedule.
    resp = await hooks.post("/_capi/hooks/bookings", data=body, headers=booking_headers(body))
    assert (await resp.json())["events"][0]["duplicate"] is True


@pytest.mark.parametrize(
    "header",
    [
        lambda h: h["X-Booking-Signature"].removeprefix("sha256="),  # prefix missing
        # One digit off, always (appending "00" would leave 1 signature in 256 unchanged).
        lambda h: (
            h["X-Booking-Signature"][:-1] + ("1" if h["X-Booking-Signature"][-1] != "1" else "2")
        ),
        lambda h: "sha256=" + base64.b64encode(b"x" * 32).decode(),  # wrong encoding
    ],
    ids=["no prefix", "wrong digest", "base64"],
)
async def test_booking_bad_signature_is_401(
    hooks: Client, header: Callable[[dict[str, str]], str]
) -> None:
    body = body_of(booking_event())
    headers = booking_headers(body)
    headers["X-Booking-Signature"] = header(headers)
    resp = await hooks.post("/_capi/hooks/bookings", data=body, headers=headers)
    assert resp.status == 401
    assert rows(hooks) == []


# -- the CRM (HMAC, base64, over "<timestamp>.<body>") --------------------------------------


async def test_crm_qualified_deal_becomes_a_lead(hooks: Client, fake_graph: FakeGraph) -> None:
    event = fixture("crm-deal-stage-changed.json")
    body = body_of(event)
    resp = await hooks.post("/_capi/hooks/crm", data=body, headers=crm_headers(body))
    assert resp.status == 200
    event_id = "crm-qualified-lead-" + event["delivery_id"]
    assert (await resp.json())["events"][0]["event_id"] == event_id
    await wait_for(lambda: bool(graph_events(fake_graph, event_id)))
    (sent,) = graph_events(fake_graph, event_id)
    assert sent["event_name"] == "Lead"
    assert sent["action_source"] == "system_generated"
    assert sent["custom_data"] == {"value": 4800, "currency": "USD", "status": "qualified"}
    assert sent["user_data"] == {
        "em": sha("ann@example.com"),
        "ph": sha("16505551212"),
        "external_id": sha("c_90412"),
    }
    # The CRM redelivers with the same delivery id: one Lead.
    resp = await hooks.post("/_capi/hooks/crm", data=body, headers=crm_headers(body))
    assert (await resp.json())["events"][0]["duplicate"] is True
    assert len(rows(hooks)) == 1


async def test_crm_other_stages_are_acknowledged_without_an_event(hooks: Client) -> None:
    event = fixture("crm-deal-stage-changed.json")
    event["deal"]["stage"] = "proposal"
    body = body_of(event)
    resp = await hooks.post("/_capi/hooks/crm", data=body, headers=crm_headers(body))
    assert resp.status == 200
    assert (await resp.json())["events"] == []
    assert rows(hooks) == []


async def test_crm_signature_binds_the_timestamp(hooks: Client) -> None:
    body = body_of(fixture("crm-deal-stage-changed.json"))
    now = int(time.time())
    stale = crm_headers(body, timestamp=now - 900)
    resp = await hooks.post("/_capi/hooks/crm", data=body, headers=stale)
    assert resp.status == 401
    # A fresh timestamp pasted onto an old signature does not verify.
    replay = dict(stale, **{"X-CRM-Timestamp": str(now)})
    resp = await hooks.post("/_capi/hooks/crm", data=body, headers=replay)
    assert resp.status == 401
    assert rows(hooks) == []


# -- form payloads and header sources (a rule file of the test's own) -----------------------

FORM_RULES = """
[[webhook]]
name = "form-signup"
hook = "forms"
event = "CompleteRegistration"
when = { kind = "signup" }
delivery_id = "delivery"
action_source = "system_generated"

[webhook.signature]
type = "hmac"
header = "X-Form-Signature"
secrets = ["form-secret"]

[webhook.extract]
email = { source = "form", key = "email" }
status = { source = "form", key = "plan" }
country = { source = "header", key = "X-Country", lower = true }
"""


async def test_a_form_encoded_payload_with_an_optional_header_absent(
    gateway: GatewayFactory, tmp_path: Path, fake_graph: FakeGraph
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "forms.toml").write_text(FORM_RULES)
    client = await gateway(rules=rules)
    body = b"kind=signup&delivery=d-17&email=Zoe%40Example.org&plan=pro"
    digest = hmac.new(b"form-secret", body, hashlib.sha256).hexdigest()
    headers = {
        "X-Form-Signature": digest,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    resp = await client.post("/_capi/hooks/forms", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["events"][0]["event_id"] == "form-signup-d-17"
    await wait_for(lambda: bool(graph_events(fake_graph, "form-signup-d-17")))
    (sent,) = graph_events(fake_graph, "form-signup-d-17")
    assert sent["user_data"] == {"em": sha("zoe@example.org")}
    assert sent["custom_data"] == {"status": "pro"}
    # With the header present it is used.
    body = body.replace(b"d-17", b"d-18")
    headers["X-Form-Signature"] = hmac.new(b"form-secret", body, hashlib.sha256).hexdigest()
    resp = await client.post(
        "/_capi/hooks/forms", data=body, headers={**headers, "X-Country": "NL"}
    )
    assert resp.status == 200
    await wait_for(lambda: bool(graph_events(fake_graph, "form-signup-d-18")))
    assert graph_events(fake_graph, "form-signup-d-18")[0]["user_data"]["country"] == sha("nl")


# -- malformed payloads: 4xx, never 5xx -----------------------------------------------------

_PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Where the mappings look: odd values exactly there reach extraction and validation.
_STRIPE_PATHS = (
    ("created",),
    ("type",),
    ("data",),
    ("data", "object"),
    ("data", "object", "amount_total"),
    ("data", "object", "currency"),
    ("data", "object", "payment_status"),
    ("data", "object", "metadata"),
    ("data", "object", "metadata", "order_id"),
    ("data", "object", "client_reference_id"),
    ("data", "object", "customer_details"),
    ("data", "object", "customer_details", "email"),
    ("data", "object", "customer_details", "phone"),
)
_BOOKING_PATHS = (
    ("event",),
    ("occurred_at",),
    ("booking",),
    ("booking", "id"),
    ("booking", "total"),
    ("booking", "currency"),
    ("booking", "services"),
    ("booking", "services", 0),
    ("booking", "services", 0, "qty"),
    ("booking", "services", 0, "price"),
    ("booking", "customer", "email"),
    ("booking", "customer", "phone"),
)


def _put(payload: Any, path: tuple[Any, ...], value: Any) -> None:
    node = payload
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict | list):
        try:
            node[path[-1]] = value
        except (IndexError, TypeError):
            return


def _stripe_signature(body: bytes) -> str:
    # By hand: Stripe's library wants text, and these bodies need not be UTF-8.
    stamp = int(time.time())
    mac = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


def _dumps(payload: Any) -> bytes:
    # allow_nan: Python's json reads NaN and Infinity, so a payload may carry them.
    return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")


_CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "",
        "application/json; charset=latin-1",
    ]
)


@_PROPERTY
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(_STRIPE_PATHS), _json | st.sampled_from(["paid", "eur"])),
        min_size=1,
        max_size=4,
    ),
    content_type=_CONTENT_TYPES,
)
async def test_odd_values_in_a_signed_stripe_payload_never_crash(
    hooks: Client, changes: list[tuple[tuple[Any, ...], Any]], content_type: str
) -> None:
    payload = stripe_event("PROP1")
    for path, value in changes:
        _put(payload, path, value)
    body = _dumps(payload)
    headers = {"Stripe-Signature": _stripe_signature(body), "Content-Type": content_type}
    resp = await hooks.post("/_capi/hooks/stripe", data=body, headers=headers)
    assert 200 <= resp.status < 500, await resp.text()
    assert resp.status in (200, 400), resp.status


@_PROPERTY
@given(
    changes=st.lists(st.tuples(st.sampled_from(_BOOKING_PATHS), _json), min_size=1, max_size=4),
)
async def test_odd_values_in_a_signed_booking_payload_never_crash(
    hooks: Client, changes: list[tuple[tuple[Any, ...], Any]]
) -> None:
    payload = booking_event("BPROP1")
    for path, value in changes:
        _put(payload, path, value)
    body = _dumps(payload)
    resp = await hooks.post("/_capi/hooks/bookings", data=body, headers=booking_headers(body))
    assert resp.status in (200, 400), await resp.text()


@_PROPERTY
@given(
    body=st.binary(max_size=3000)
    | st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | _json.map(_dumps)
    | st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=30).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    )
    | st.integers(min_value=1, max_value=2000).map(lambda n: b"&".join([b"a=1"] * n))
    | st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    content_type=_CONTENT_TYPES,
    hook=st.sampled_from(["stripe", "bookings", "crm"]),
)
async def test_any_signed_body_is_answered_below_500(
    hooks: Client, body: bytes, content_type: str, hook: str
) -> None:
    if hook == "stripe":
        headers = {"Stripe-Signature": _stripe_signature(body)}
    elif hook == "bookings":
        headers = booking_headers(body)
    else:
        headers = crm_headers(body)
    headers["Content-Type"] = content_type
    resp = await hooks.post(f"/_capi/hooks/{hook}", data=body, headers=headers)
    assert resp.status in (200, 400), (resp.status, await resp.text())


# What a client can put in a header value at all: visible latin-1, spaces and tabs.
_HEADER = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=200,
)
_SIGNATURE = (
    _HEADER
    | st.builds(lambda t, v: f"t={t},v1={v}", st.integers(0, 2**40), st.text("0123456789abcdef"))
    | st.builds(lambda v: f"sha256={v}", st.text("0123456789abcdef", min_size=64, max_size=64))
    | st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
)


@_PROPERTY
@given(
    signature=_SIGNATURE,
    timestamp=_HEADER | st.integers(-(2**70), 2**70).map(str),
    body=st.binary(max_size=500),
    hook=st.sampled_from(["stripe", "bookings", "crm"]),
)
async def test_any_unsigned_request_is_401(
    hooks: Client, signature: str, timestamp: str, body: bytes, hook: str
) -> None:
    name = {
        "stripe": "Stripe-Signature",
        "bookings": "X-Booking-Signature",
        "crm": "X-CRM-Signature",
    }
    headers = {name[hook]: signature, "X-CRM-Timestamp": timestamp}
    resp = await hooks.post(f"/_capi/hooks/{hook}", data=body, headers=headers)
    assert resp.status == 401, await resp.text()
    assert rows(hooks) == []
