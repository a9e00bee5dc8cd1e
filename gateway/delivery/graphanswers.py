"""What the Graph API answered, read: the outcome a sender acts on and what Meta said.

Meta's error code says more than the HTTP status (throttling often comes back as 400), and
an answer's text can carry the token (aiohttp puts the request URL in several exception
texts), so every message is scrubbed before it is stored or logged.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
_TRANSIENT_CODES = frozenset({1, 2})
# 102 is the legacy "API session" token error; it needs a new token exactly like 190.
_TOKEN_CODES = frozenset({102, 190})
_PERMISSION_CODES = frozenset({10, *range(200, 300)})
_POLICY_CODES = frozenset({368})
_INVALID_PARAMETER = 100
# Code 100 subcode 33: the pixel does not exist or the token cannot see it. Every event
# would fail the same way, so bisecting and dead-lettering would discard the whole queue
# over a configuration mistake; hold instead.
_UNKNOWN_OBJECT_SUBCODE = 33

_TOKEN_IN_QUERY = re.compile(r"(access_token|appsecret_proof)=[^&\s'\"<>]*")
_WHITESPACE = re.compile(r"\s+")
_SNIPPET = 200


class Outcome(enum.Enum):
    """What the caller should do with the batch after one attempt."""

    SENT = "sent"
    RETRY = "retry"
    THROTTLED = "throttled"
    INVALID = "invalid"
    BLOCKED = "blocked"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one request to the Graph API, with what Meta said about it."""

    outcome: Outcome
    status: int | None
    events_received: int | None
    fbtrace_id: str | None
    code: int | None
    subcode: int | None
    message: str
    retry_after: float | None
    body: dict[str, Any] | None

    def error_label(self) -> str | None:
        """None when Meta took the batch, else its error code, `http_N`, or `network`."""
        if self.outcome is Outcome.SENT:
            return None
        if self.code is not None:
            return str(self.code)
        if self.status is not None:
            return f"http_{self.status}"
        return "network"


def classify(status: int | None, body: Mapping[str, Any] | None) -> Outcome:
    """Map an HTTP status and a Graph API answer to what the sender should do next."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.SENT
    error = _error_of(body)
    code = _int_or_none(error.get("code"))
    if code is not None:
        # Meta's code is more specific than the HTTP status, which it sets loosely
        # (throttling often comes back as 400, not 429).
        if code in _THROTTLE_CODES:
            return Outcome.THROTTLED
        if error.get("is_transient") is True or code in _TRANSIENT_CODES:
            return Outcome.RETRY
        if code in _TOKEN_CODES or code in _PERMISSION_CODES:
            return Outcome.BLOCKED
        if code == _INVALID_PARAMETER:
            if _int_or_none(error.get("error_subcode")) == _UNKNOWN_OBJECT_SUBCODE:
                return Outcome.BLOCKED
            return Outcome.INVALID
        if code in _POLICY_CODES:
            return Outcome.REJECTED
    elif error.get("is_transient") is True:
        return Outcome.RETRY
    if status == 429:
        return Outcome.THROTTLED
    if status >= 500:
        return Outcome.RETRY
    if 400 <= status < 500:
        # An unknown 4xx may come from one bad event: let the caller bisect to find out.
        return Outcome.INVALID
    # Redirects are not followed (the token is in the query) and 1xx cannot be final: the
    # graph URL is misconfigured, which no amount of retrying fixes, but the events are fine.
    return Outcome.BLOCKED


def read_answer(
    status: int,
    raw: bytes,
    content_type: str,
    header_trace: str | None,
    retry_after: float | None,
    secrets: Sequence[str],
) -> SendResult:
    """The result of an answer Meta sent: its outcome, trace id, code and scrubbed message."""
    body = _parse_json_object(raw)
    outcome = classify(status, body)
    error = _error_of(body)
    trace = _str_or_none(error.get("fbtrace_id"))
    if trace is None and body is not None:
        trace = _str_or_none(body.get("fbtrace_id"))
    if trace is None:
        trace = header_trace
    if outcome is Outcome.SENT:
        received = _int_or_none(body.get("events_received")) if body is not None else None
        message = ""
    else:
        received = None
        message = scrub(_error_message(status, body, error, raw, content_type), secrets)
    return SendResult(
        outcome=outcome,
        status=status,
        events_received=received,
        fbtrace_id=trace,
        code=_int_or_none(error.get("code")),
        subcode=_int_or_none(error.get("error_subcode")),
        message=message,
        retry_after=retry_after,
        body=body,
    )


def local_result(message: str, outcome: Outcome = Outcome.RETRY) -> SendResult:
    """A result that holds nothing Meta said: a network failure (retried) by default, or
    what the caller decided itself (no token, an answer missing what it needed)."""
    return SendResult(
        outcome=outcome,
        status=None,
        events_received=None,
        fbtrace_id=None,
        code=None,
        subcode=None,
        message=message,
        retry_after=None,
        body=None,
    )


def _error_message(
    status: int,
    body: Mapping[str, Any] | None,
    error: Mapping[str, Any],
    raw: bytes,
    content_type: str,
) -> str:
    if error:
        message = str(error.get("message") or f"HTTP {status}")
        title = str(error.get("error_user_title") or "")
        user_msg = str(error.get("error_user_msg") or "")
        # For CAPI the user-facing fields say which event field is wrong; the plain message
        # is often just "Invalid parameter".
        if user_msg and user_msg not in message:
            detail = f"{title}: {user_msg}" if title and title not in message else user_msg
            return f"{message} - {detail}"
        return message
    if body is not None:
        return f"HTTP {status}: unexpected JSON answer without an error object"
    snippet = one_line(raw[: _SNIPPET * 4].decode("utf-8", "replace"))
    if len(snippet) > _SNIPPET:
        snippet = snippet[:_SNIPPET] + "..."
    kind = content_type or "no content type"
    return f"HTTP {status}: non-JSON answer ({kind}): {snippet}" if snippet else f"HTTP {status}"


def one_line(text: str) -> str:
    """`text` with every run of whitespace, line breaks included, as one space."""
    return _WHITESPACE.sub(" ", text).strip()


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` without the token, the app secret's proof or any of `secrets`."""
    # aiohttp puts the full request URL, query included, into several exception texts.
    text = _TOKEN_IN_QUERY.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _parse_json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _error_of(body: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if body is None:
        return {}
    error = body.get("error")
    return error if isinstance(error, Mapping) else {}


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
