"""`KeyedSha256`: HMAC-SHA256 from pre-padded states, checked against the standard library."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.delivery.profiles import ProfilePolicy
from gateway.pipeline.keyedhash import KeyedSha256, keyed_sha256


@pytest.mark.parametrize("size", [0, 1, 32, 63, 64, 65, 200])
def test_digest_is_hmac_sha256(size: int) -> None:
    key = bytes(range(7, 256))[:size]
    mac = KeyedSha256(key)
    for message in (b"", b"fbp\x1ffb.1.1765090000000.123", bytes(range(256)) * 3):
        assert mac.digest(message) == hmac.digest(key, message, "sha256")
        # A state is copied, never consumed: the same message gives the same MAC again.
        assert mac.digest(message) == hmac.new(key, message, hashlib.sha256).digest()


def test_one_instance_per_key() -> None:
    assert keyed_sha256(b"a" * 32) is keyed_sha256(b"a" * 32)
    assert keyed_sha256(b"a" * 32) is not keyed_sha256(b"b" * 32)


def test_profile_key_hash_is_unchanged() -> None:
    """The stored profile keys of rows written before stay the keys looked up now."""
    policy = ProfilePolicy.from_key(b"k" * 32, ttl=3600, max_profiles=10)
    value = "fb.1.1765090000000.1234567890"
    expected = hmac.digest(policy.lookup_key, f"fbp\x1f{value}".encode(), "sha256").hex()
    assert policy.key_hash("fbp", value) == expected
