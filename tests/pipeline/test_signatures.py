"""Webhook signatures: Stripe's scheme (against the official `stripe` package) and HMAC schemes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stripe import SignatureVerificationError, WebhookSignature

from gateway.pipeline.signatures import (
    HmacScheme,
    SignatureError,
    sign_hmac,
    sign_stripe,
    verify_hmac,
    verify_stripe,
)

SECRET = "whsec_test_5f1c0a3b9e2d4c6a8b7e9f0a1b2c3d4e"
OLD_SECRET = "whsec_old_00112233445566778899aabbccddeeff"
BODY = b'{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"id":"cs_1"}}}'
T0 = 1_763_840_000


def _stripe_hex(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------
# Stripe
# ---------------------------------------------------------------------------------------------


def test_stripe_header_matches_the_official_library() -> None:
    ours = sign_stripe(BODY, SECRET, T0)
    theirs = WebhookSignature.generate_signature_header(BODY.decode(), SECRET, timestamp=T0)
    assert ours == theirs == f"t={T0},v1={_stripe_hex(SECRET, T0, BODY)}"


def test_stripe_valid_header_accepted_by_both() -> None:
    header = WebhookSignature.generate_signature_header(BODY.decode(), SECRET, timestamp=T0)
    verify_stripe(header, BODY, [SECRET], now=T0 + 10)
    # Same verdict from Stripe's own verifier (its clock is real, so no tolerance there).
    assert WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=None)


@pytest.mark.parametrize(
    "body",
    [BODY + b" ", BODY.replace(b"cs_1", b"cs_2"), b"", BODY[:-1]],
    ids=["appended", "changed", "empty", "truncated"],
)
def test_stripe_tampered_body_refused_by_both(body: bytes) -> None:
    header = sign_stripe(BODY, SECRET, T0)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe(header, body, [SECRET], now=T0)
    with pytest.raises(SignatureVerificationError):
        WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=None)


def test_stripe_wrong_secret_refused() -> None:
    header = sign_stripe(BODY, SECRET, T0)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe(header, BODY, [OLD_SECRET], now=T0)


def test_stripe_rotation_any_configured_secret_and_any_v1() -> None:
    # We rotated: the old secret is still configured second.
    verify_stripe(sign_stripe(BODY, OLD_SECRET, T0), BODY, [SECRET, OLD_SECRET], now=T0)
    # Stripe rolled the endpoint secret: it sends one v1 per live secret, plus a v0.
    header = (
        f"t={T0},v1={_stripe_hex(OLD_SECRET, T0, BODY)},"
        f"v1={_stripe_hex(SECRET, T0, BODY)},v0={'0' * 64}"
    )
    verify_stripe(header, BODY, [SECRET], now=T0)
    assert WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=None)


def test_stripe_only_v1_counts() -> None:
    header = f"t={T0},v0={_stripe_hex(SECRET, T0, BODY)}"
    with pytest.raises(SignatureError, match="no v1 signature"):
        verify_stripe(header, BODY, [SECRET], now=T0)


def test_stripe_signature_is_bound_to_the_timestamp() -> None:
    forged = f"t={T0 + 60},v1={_stripe_hex(SECRET, T0, BODY)}"
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe(forged, BODY, [SECRET], now=T0 + 60)


@pytest.mark.parametrize("delta", [0, 299, -299, 300, -300])
def test_stripe_within_tolerance(delta: int) -> None:
    verify_stripe(sign_stripe(BODY, SECRET, T0), BODY, [SECRET], now=T0 + delta)


@pytest.mark.parametrize("delta", [301, -301, 86_400], ids=["expired", "future", "day-old"])
def test_stripe_outside_tolerance(delta: int) -> None:
    with pytest.raises(SignatureError) as info:
        verify_stripe(sign_stripe(BODY, SECRET, T0), BODY, [SECRET], now=T0 + delta)
    assert str(info.value) == "timestamp outside the 300 s tolerance"


def test_stripe_custom_tolerance_and_disabled() -> None:
    header = sign_stripe(BODY, SECRET, T0)
    with pytest.raises(SignatureError, match="outside the 60 s tolerance"):
        verify_stripe(header, BODY, [SECRET], tolerance=60, now=T0 + 61)
    verify_stripe(header, BODY, [SECRET], tolerance=0, now=T0 + 10**6)


def test_stripe_real_clock_default() -> None:
    import time

    verify_stripe(sign_stripe(BODY, SECRET, int(time.time())), BODY, [SECRET])
    with pytest.raises(SignatureError, match="tolerance"):
        verify_stripe(sign_stripe(BODY, SECRET, int(time.time()) - 3600), BODY, [SECRET])


def test_stripe_zero_padded_timestamp_signs_its_number() -> None:
    # Stripe's libraries sign "%d" of the parsed timestamp.
    header = f"t=0{T0},v1={_stripe_hex(SECRET, T0, BODY)}"
    verify_stripe(header, BODY, [SECRET], now=T0)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing Stripe-Signature header"),
        ("", "missing Stripe-Signature header"),
        ("   ", "missing Stripe-Signature header"),
        (f"v1={'a' * 64}", "Stripe-Signature header has no timestamp (t=)"),
        (f"t,v1={'a' * 64}", "Stripe-Signature header has no timestamp (t=)"),
        (f"t=abc,v1={'a' * 64}", "Stripe-Signature header has a timestamp that is not a number"),
        (f"t=-5,v1={'a' * 64}", "Stripe-Signature header has a timestamp that is not a number"),
        (f"t=1_000,v1={'a' * 64}", "Stripe-Signature header has a timestamp that is not a number"),
        (f"t={'9' * 5000},v1=a", "Stripe-Signature header is too long"),
        (f"t={'9' * 40},v1=a", "Stripe-Signature header has a timestamp that is not a number"),
        (f"t={T0}", "Stripe-Signature header has no v1 signature"),
        (f"t={T0},v1=", "Stripe-Signature header has no v1 signature"),
        (f"t={T0},v1=,v1=", "Stripe-Signature header has no v1 signature"),
        (f"t={T0},v1=é{'a' * 63}", "Stripe-Signature header has no v1 signature"),
        (f"t={T0},v1={'a' * 64}", "no signature matches"),
        (f"t={T0}," + ",".join([f"v1={'a' * 64}"] * 100), "Stripe-Signature header is too long"),
        ("garbage", "Stripe-Signature header has no timestamp (t=)"),
    ],
)
def test_stripe_malformed_headers(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify_stripe(header, BODY, [SECRET], now=T0)
    assert str(info.value) == reason


def test_stripe_no_secret_configured() -> None:
    header = sign_stripe(BODY, SECRET, T0)
    for secrets in ([], [""], ["  "]):
        with pytest.raises(SignatureError, match="no webhook secret is configured"):
            verify_stripe(header, BODY, secrets, now=T0)


def test_stripe_error_never_reveals_secret_or_expected_signature() -> None:
    expected = _stripe_hex(SECRET, T0, BODY)
    for header in (f"t={T0},v1={'0' * 64}", f"t={T0 - 999},v1={expected}"):
        with pytest.raises(SignatureError) as info:
            verify_stripe(header, BODY, [SECRET], now=T0)
        text = str(info.value) + repr(info.value)
        assert SECRET not in text and expected not in text and "whsec" not in text


def test_stripe_non_utf8_body_signed_as_bytes() -> None:
    body = b"\xff\xfe binary \x00"
    verify_stripe(sign_stripe(body, SECRET, T0), body, [SECRET], now=T0)


# ---------------------------------------------------------------------------------------------
# Generic HMAC
# ---------------------------------------------------------------------------------------------

KEY = "shpss_hmac_secret_0123456789"
OLD_KEY = "shpss_hmac_secret_old"


def _mac(key: str, message: bytes) -> bytes:
    return hmac.new(key.encode(), message, hashlib.sha256).digest()


def test_hmac_hex_by_hand() -> None:
    scheme = HmacScheme(header="X-Signature", secrets=(KEY,))
    headers = sign_hmac(scheme, BODY)
    assert headers == {"X-Signature": _mac(KEY, BODY).hex()}
    verify_hmac(scheme, headers, BODY)


def test_hmac_github_style_prefix() -> None:
    scheme = HmacScheme(header="X-Hub-Signature-256", secrets=(KEY,), prefix="sha256=")
    headers = {"x-hub-signature-256": "sha256=" + _mac(KEY, BODY).hex()}
    verify_hmac(scheme, headers, BODY)  # header names are case-insensitive
    assert sign_hmac(scheme, BODY) == {"X-Hub-Signature-256": headers["x-hub-signature-256"]}
    with pytest.raises(SignatureError, match="does not start with 'sha256='"):
        verify_hmac(scheme, {"X-Hub-Signature-256": _mac(KEY, BODY).hex()}, BODY)


def test_hmac_base64_shopify_style() -> None:
    scheme = HmacScheme(header="X-Shopify-Hmac-Sha256", secrets=(KEY,), encoding="base64")
    value = base64.b64encode(_mac(KEY, BODY)).decode()
    assert sign_hmac(scheme, BODY) == {"X-Shopify-Hmac-Sha256": value}
    verify_hmac(scheme, {"X-Shopify-Hmac-Sha256": value}, BODY)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_hmac(scheme, {"X-Shopify-Hmac-Sha256": value}, BODY + b"x")
    with pytest.raises(SignatureError, match="is not a base64 signature"):
        verify_hmac(scheme, {"X-Shopify-Hmac-Sha256": value[:-2] + "!!"}, BODY)


def test_hmac_slack_style_timestamp_template() -> None:
    scheme = HmacScheme(
        header="X-Slack-Signature",
        secrets=(KEY,),
        prefix="v0=",
        timestamp_header="X-Slack-Request-Timestamp",
        template="v0:{timestamp}:{body}",
    )
    expected = "v0=" + _mac(KEY, f"v0:{T0}:".encode() + BODY).hex()
    headers = sign_hmac(scheme, BODY, T0)
    assert headers == {"X-Slack-Request-Timestamp": str(T0), "X-Slack-Signature": expected}
    verify_hmac(scheme, headers, BODY, now=T0 + 299)
    with pytest.raises(SignatureError, match="timestamp outside the 300 s tolerance"):
        verify_hmac(scheme, headers, BODY, now=T0 + 301)
    with pytest.raises(SignatureError, match="timestamp outside the 300 s tolerance"):
        verify_hmac(scheme, headers, BODY, now=T0 - 301)
    # A fresh timestamp on an old signature does not verify: the timestamp is signed.
    replay = {**headers, "X-Slack-Request-Timestamp": str(T0 + 600)}
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_hmac(scheme, replay, BODY, now=T0 + 600)
    with pytest.raises(SignatureError, match="missing X-Slack-Request-Timestamp header"):
        verify_hmac(scheme, {"X-Slack-Signature": expected}, BODY, now=T0)
    bad_time = {**headers, "X-Slack-Request-Timestamp": "soon"}
    with pytest.raises(SignatureError, match="X-Slack-Request-Timestamp header is not a number"):
        verify_hmac(scheme, bad_time, BODY, now=T0)


def test_hmac_dot_template_and_body_with_placeholder_text() -> None:
    scheme = HmacScheme(
        header="X-Signature",
        secrets=(KEY,),
        timestamp_header="X-Timestamp",
        template="{timestamp}.{body}",
    )
    body = b'{"note":"{timestamp} and {body} are literal here"}'
    headers = {"X-Timestamp": str(T0), "X-Signature": _mac(KEY, f"{T0}.".encode() + body).hex()}
    verify_hmac(scheme, headers, body, now=T0)
    assert sign_hmac(scheme, body, T0) == headers


def test_hmac_rotation_wrong_secret_and_uppercase_hex() -> None:
    scheme = HmacScheme(header="X-Signature", secrets=(KEY, OLD_KEY))
    verify_hmac(scheme, {"X-Signature": _mac(OLD_KEY, BODY).hex().upper()}, BODY)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_hmac(scheme, {"X-Signature": _mac("other", BODY).hex()}, BODY)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Signature header"),
        ({"X-Signature": " "}, "missing X-Signature header"),
        ({"X-Signature": "zz" * 32}, "X-Signature header is not a hex signature"),
        ({"X-Signature": "abc"}, "X-Signature header is not a hex signature"),
        ({"X-Signature": "é" * 64}, "X-Signature header is not a hex signature"),
        ({"X-Signature": "ab" * 5000}, "X-Signature header is too long"),
        ({"X-Signature": "ab" * 16}, "no signature matches"),
    ],
)
def test_hmac_malformed_headers(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify_hmac(HmacScheme(header="X-Signature", secrets=(KEY,)), headers, BODY)
    assert str(info.value) == reason
    assert KEY not in repr(info.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"header": " "}, "header must name"),
        ({"secrets": ()}, "at least one non-empty secret"),
        ({"secrets": ("",)}, "at least one non-empty secret"),
        ({"encoding": "base32"}, "encoding must be"),
        ({"template": "{timestamp}"}, "must contain {body}"),
        ({"template": "{timestamp}.{body}"}, "no timestamp_header"),
        ({"timestamp_header": "X-Timestamp"}, "does not sign {timestamp}"),
        ({"tolerance": float("nan")}, "tolerance must be"),
    ],
)
def test_hmac_scheme_rejects_bad_config(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"header": "X-Signature", "secrets": (KEY,), **fields}
    with pytest.raises(ValueError, match=message):
        HmacScheme(**values)  # type: ignore[arg-type]


def test_hmac_scheme_keeps_secrets_as_a_tuple() -> None:
    scheme = HmacScheme(header="X-Signature", secrets=[KEY])  # type: ignore[arg-type]
    assert scheme.secrets == (KEY,)
    assert hash(scheme)


# ---------------------------------------------------------------------------------------------
# Robustness: whatever arrives, the only failure is SignatureError
# ---------------------------------------------------------------------------------------------

_HEADER_TEXT = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.builds(
        lambda t, parts: f"t={t}," + ",".join(parts),
        st.one_of(st.integers(-(10**20), 10**20).map(str), st.text(max_size=20)),
        st.lists(
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(["v1", "v0", "t", "", "v1 "]),
                st.text(max_size=80),
            ),
            max_size=6,
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(header=_HEADER_TEXT, body=st.binary(max_size=200), now=st.floats(allow_nan=False))
def test_stripe_never_raises_anything_else(header: str | None, body: bytes, now: float) -> None:
    try:
        verify_stripe(header, body, [SECRET, ""], now=now)
    except SignatureError:
        return
    raise AssertionError("an unsigned input verified")


_SCHEMES = st.sampled_from(
    [
        HmacScheme(header="X-Signature", secrets=(KEY,)),
        HmacScheme(header="X-Signature", secrets=(KEY,), encoding="base64", prefix="sha256="),
        HmacScheme(
            header="X-Signature",
            secrets=(KEY, OLD_KEY),
            timestamp_header="X-Timestamp",
            template="v0:{timestamp}:{body}",
        ),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    scheme=_SCHEMES,
    headers=st.dictionaries(
        st.sampled_from(["X-Signature", "x-signature", "X-Timestamp", "Other"]),
        st.one_of(st.text(max_size=120), st.binary(max_size=32).map(lambda b: b.hex())),
        max_size=4,
    ),
    body=st.binary(max_size=200),
    now=st.floats(allow_nan=False),
)
def test_hmac_never_raises_anything_else(
    scheme: HmacScheme, headers: dict[str, str], body: bytes, now: float
) -> None:
    try:
        verify_hmac(scheme, headers, body, now=now)
    except SignatureError:
        return
    raise AssertionError("an unsigned input verified")
