"""Signed page tokens: round trip and every way a token must fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import uuid

import pytest

from gateway.edge import pagetoken
from gateway.edge.pagetoken import TokenClaims, sign, verify
from gateway.pipeline.keyedhash import keyed_sha256

SECRET = b"0123456789abcdef0123456789abcdef"
CLIENT = "198.51.100.7|Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
EVENT = "pv.3f2a9c4e-1b7d-4c2a-9e51-0d6b8a7f3c21"
T0 = 1_763_840_000
TTL = 1800


def _token(event_id: str = EVENT, issued: int = T0, client: str = CLIENT) -> str:
    return sign(SECRET, event_id, issued=issued, client=client)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_round_trip() -> None:
    token = _token()
    assert verify(SECRET, token, client=CLIENT, now=T0 + 5, ttl=TTL) == TokenClaims(EVENT, T0)


def test_round_trip_unicode_event_id() -> None:
    token = _token("événement-1")
    claims = verify(SECRET, token, client=CLIENT, now=T0, ttl=TTL)
    assert claims is not None and claims.event_id == "événement-1"


def test_deterministic_and_bound_to_inputs() -> None:
    assert _token() == _token()
    assert len({_token(), _token(issued=T0 + 1), _token(EVENT + "x"), _token(client="x")}) == 4


def test_token_is_url_safe_ascii_without_client_data() -> None:
    token = _token(client="203.0.113.99|SecretAgent/1.0")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert token.isascii()
    decoded = b"".join(_unb64(part) for part in token.split("."))
    for needle in (b"203.0.113.99", b"SecretAgent", b"203", b"Agent"):
        assert needle not in decoded and needle.decode() not in token


@pytest.mark.parametrize("delta", [0, 1, TTL])
def test_fresh_within_ttl(delta: int) -> None:
    assert verify(SECRET, _token(), client=CLIENT, now=T0 + delta, ttl=TTL) is not None


def test_expired() -> None:
    assert verify(SECRET, _token(), client=CLIENT, now=T0 + TTL + 1, ttl=TTL) is None


def test_future_allows_small_skew_only() -> None:
    assert verify(SECRET, _token(issued=T0 + 60), client=CLIENT, now=T0, ttl=TTL) is not None
    assert verify(SECRET, _token(issued=T0 + 61), client=CLIENT, now=T0, ttl=TTL) is None


def test_other_client() -> None:
    token = _token()
    assert verify(SECRET, token, client="198.51.100.8|" + CLIENT[13:], now=T0, ttl=TTL) is None
    assert verify(SECRET, token, client=CLIENT + " ", now=T0, ttl=TTL) is None


def test_wrong_secret() -> None:
    assert verify(SECRET[::-1], _token(), client=CLIENT, now=T0, ttl=TTL) is None


def _tampered_payload(mutate: int) -> str:
    payload_b64, mac_b64 = _token().split(".")
    payload = bytearray(_unb64(payload_b64))
    payload[mutate] ^= 0x01
    return f"{_b64(bytes(payload))}.{mac_b64}"


@pytest.mark.parametrize(
    "mutate",
    [0, 8, 9, len(EVENT) + 8],  # version, issued (low byte), event_id first and last byte
)
def test_tampered_payload(mutate: int) -> None:
    assert verify(SECRET, _tampered_payload(mutate), client=CLIENT, now=T0, ttl=TTL) is None


def test_tampered_issued_to_extend_life() -> None:
    payload_b64, mac_b64 = _token().split(".")
    payload = bytearray(_unb64(payload_b64))
    payload[1:9] = (T0 + 10_000).to_bytes(8, "big")
    forged = f"{_b64(bytes(payload))}.{mac_b64}"
    assert verify(SECRET, forged, client=CLIENT, now=T0 + 10_000, ttl=TTL) is None


def test_swapped_event_id_with_valid_signature_of_another_token() -> None:
    a_payload, _ = _token("a").split(".")
    _, b_mac = _token("b").split(".")
    assert verify(SECRET, f"{a_payload}.{b_mac}", client=CLIENT, now=T0, ttl=TTL) is None


def test_tampered_signature() -> None:
    payload_b64, mac_b64 = _token().split(".")
    mac = bytearray(_unb64(mac_b64))
    mac[-1] ^= 0x80
    assert (
        verify(SECRET, f"{payload_b64}.{_b64(bytes(mac))}", client=CLIENT, now=T0, ttl=TTL) is None
    )
    assert verify(SECRET, f"{payload_b64}.{mac_b64[:-4]}", client=CLIENT, now=T0, ttl=TTL) is None


def test_boundary_shift_between_event_id_and_client_fails() -> None:
    # Same concatenated bytes, different split: must not verify.
    token = sign(SECRET, "ab", issued=T0, client="c")
    payload_b64, mac_b64 = token.split(".")
    payload = _unb64(payload_b64)[:-1]  # event_id "a"
    forged = f"{_b64(payload)}.{mac_b64}"
    assert verify(SECRET, forged, client="bc", now=T0, ttl=TTL) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "not base64!.abc",
        "AQ.AQ",
        "x" * 5000 + ".abc",
        "ÄÖ.abc",
    ],
)
def test_malformed(token: str) -> None:
    assert verify(SECRET, token, client=CLIENT, now=T0, ttl=TTL) is None


def test_non_canonical_base64_is_rejected() -> None:
    payload_b64, mac_b64 = _token().split(".")
    # Change unused low bits of the last character: decodes to the same bytes, other spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac_b64[-1])
    twin = mac_b64[:-1] + alphabet[last ^ 0x01]
    assert _unb64(twin) == _unb64(mac_b64)
    assert verify(SECRET, f"{payload_b64}.{twin}", client=CLIENT, now=T0, ttl=TTL) is None


@pytest.mark.parametrize(
    ("secret", "event_id", "issued"),
    [(b"", EVENT, T0), (SECRET, "", T0), (SECRET, "x" * 513, T0), (SECRET, EVENT, -1)],
)
def test_sign_rejects_bad_input(secret: bytes, event_id: str, issued: int) -> None:
    with pytest.raises(ValueError):
        sign(secret, event_id, issued=issued, client=CLIENT)


def test_verify_rejects_empty_secret() -> None:
    with pytest.raises(ValueError):
        verify(b"", _token(), client=CLIENT, now=T0, ttl=TTL)


def test_other_replica_with_same_secret_verifies() -> None:
    # Stateless: a token is checkable from its text, the secret and the request alone.
    token = sign(bytes(SECRET), EVENT, issued=T0, client=CLIENT)
    assert verify(bytes(bytearray(SECRET)), token, client=CLIENT, now=T0, ttl=TTL) is not None


def test_new_event_ids_are_distinct_version_7_uuids() -> None:
    ids = [pagetoken.new_event_id() for _ in range(3 * 256 + 5)]  # past several pools
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)


def test_new_event_ids_grow_with_time_and_carry_their_millisecond() -> None:
    # Appended at the end of the event-key indexes instead of one random page each.
    times = [T0 + i * 0.001 for i in range(0, 5000, 7)]
    ids = [pagetoken.new_event_id(t) for t in times]
    assert ids == sorted(ids)
    assert [uuid.UUID(i).int >> 80 for i in ids] == [int(t * 1000) for t in times]


def test_a_forked_worker_does_not_reuse_the_parents_pool_of_ids() -> None:
    pagetoken.new_event_id()  # the pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, pagetoken.new_event_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child != pagetoken.new_event_id()


@pytest.mark.parametrize("size", [1, 32, 63, 64, 65, 200])
def test_the_page_token_mac_is_hmac_sha256(size: int) -> None:
    secret = bytes(range(1, 256))[:size]
    message = b"label\x00" + bytes(range(100))
    assert (
        keyed_sha256(secret).digest(message) == hmac.new(secret, message, hashlib.sha256).digest()
    )
