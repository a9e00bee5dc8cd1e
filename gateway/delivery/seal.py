"""Encryption at rest for the clear-text fields of an event (IP, user agent, fbp, fbc, ...).

AES-256-GCM with a random 96-bit nonce per row; the row's key (`models.row_key`) is the
associated data, so a sealed blob copied onto another row fails to open instead of leaking.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.pipeline import jsonfast
from gateway.settings import ConfigError, Settings, decode_key

log = logging.getLogger("gateway.seal")

_NONCE = 12


class SealError(Exception):
    """A sealed blob could not be opened (wrong key or tampered row)."""


class Sealer:
    """Seal and open small JSON objects bound to a row key (`models.row_key`)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, fields: dict[str, Any], row_key: str) -> bytes | None:
        """Nonce + ciphertext of `fields` as JSON, or None when there is nothing to hide."""
        if not fields:
            return None
        nonce = os.urandom(_NONCE)
        # Only `open` reads these bytes back (the AEAD authenticates whatever they are).
        plain = jsonfast.dumps_bytes(fields)
        return nonce + self._aead.encrypt(nonce, plain, row_key.encode())

    def open(self, blob: bytes | None, row_key: str) -> dict[str, Any]:
        """The fields sealed into `blob`; raises SealError when it does not authenticate."""
        if not blob:
            return {}
        try:
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], row_key.encode())
        except InvalidTag as exc:
            raise SealError("sealed fields do not open with this key") from exc
        value = jsonfast.loads(plain)
        if not isinstance(value, dict):
            raise SealError("sealed fields are not an object")
        return value


def load_key(settings: Settings, *, create: bool = True) -> bytes:
    """The configured key, else the key file beside the buffer (generated once, 0600)."""
    if settings.encryption_key:
        return decode_key(settings.encryption_key)
    path = settings.key_path()
    if path.exists():
        return _read_key_file(path)
    if not create:
        raise ConfigError(
            f"encryption_key: no key configured and no key file at {path}; "
            "set CAPIGW_ENCRYPTION_KEY or --key-file"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    # Write a private temp file, then hard-link it into place: a second worker racing us
    # either wins (we read its key) or loses, never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.warning(
        "Generated a new encryption key for the outbox at %s (mode 0600); back it up with "
        "the buffer, or set encryption_key to manage it yourself.",
        str(path),
    )
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        return decode_key(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"key_file: {path} does not hold a 32-byte hex or base64 key") from exc
