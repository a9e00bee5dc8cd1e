"""Client for the Conversions API endpoint of Meta's Graph API, and its answer classifier."""

from __future__ import annotations

import enum
import errno
import hashlib
import hmac
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from gateway.delivery.retry import parse_retry_after

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


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """Lowercase hex HMAC-SHA256(key=app secret, msg=access token)."""
    return hmac.new(
        app_secret.encode("utf-8"), access_token.encode("utf-8"), hashlib.sha256
    ).hexdigest()


class GraphClient:
    """Sends batches of server events to one Graph API endpoint over a caller-owned session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        graph_url: str,
        graph_version: str,
        timeout: float,
        partner_agent: str,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._session = session
        self._base = f"{graph_url.rstrip('/')}/{quote(graph_version.strip('/'), safe='.')}"
        self._timeout_s = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._partner_agent = partner_agent
        self._json_headers = {"Content-Type": "application/json", "User-Agent": partner_agent}
        self._get_headers = {"User-Agent": partner_agent}

    async def send(
        self,
        pixel_id: str,
        events: Sequence[Mapping[str, Any]],
        *,
        access_token: str,
        test_event_code: str | None = None,
        app_secret: str | None = None,
    ) -> SendResult:
        """POST one batch of events; never raises for network or HTTP failures."""
        payload: dict[str, Any] = {"data": events, "partner_agent": self._partner_agent}
        if test_event_code:
            payload["test_event_code"] = test_event_code
        # Compact separators keep big batches small; aiohttp's json= would use json.dumps'
        # spaced defaults and an extra str -> bytes pass.
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return await self._request(
            "POST",
            f"{self._base}/{_path_segment(pixel_id)}/events",
            access_token=access_token,
            app_secret=app_secret,
            data=data,
            headers=self._json_headers,
        )

    async def check_token(
        self, pixel_id: str, *, access_token: str, app_secret: str | None = None
    ) -> SendResult:
        """GET the pixel's id with the token to check that the token can reach the pixel."""
        return await self._request(
            "GET",
            f"{self._base}/{_path_segment(pixel_id)}",
            access_token=access_token,
            app_secret=app_secret,
            extra_params={"fields": "id"},
            headers=self._get_headers,
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        access_token: str,
        app_secret: str | None = None,
        form: Mapping[str, str] | None = None,
    ) -> SendResult:
        """One Graph API call to `path` (under the version) with a form-encoded body, as
        the Marketing API takes it (Custom Audiences); never raises for network or HTTP
        failures."""
        segments = "/".join(_path_segment(part) for part in path.strip("/").split("/"))
        return await self._request(
            method,
            f"{self._base}/{segments}",
            access_token=access_token,
            app_secret=app_secret,
            # A stream: aiohttp warns that a body of megabytes (10,000 rows) given as bytes
            # would hold the event loop while it is written.
            data=io.BytesIO(urlencode(form).encode("ascii")) if form else None,
            headers={**self._get_headers, "Content-Type": "application/x-www-form-urlencoded"},
        )

    async def items_batch(
        self,
        catalog_id: str,
        requests: Sequence[Mapping[str, Any]],
        *,
        access_token: str,
        app_secret: str | None = None,
    ) -> SendResult:
        """POST one Catalog Batch API call (`item_type=PRODUCT_ITEM`); Meta answers `handles`."""
        payload = {"item_type": "PRODUCT_ITEM", "allow_upsert": True, "requests": requests}
        return await self._request(
            "POST",
            f"{self._base}/{_path_segment(catalog_id)}/items_batch",
            access_token=access_token,
            app_secret=app_secret,
            data=json.dumps(payload, separators=(",", ":")).encode("utf-8"),
            headers=self._json_headers,
        )

    async def batch_status(
        self, catalog_id: str, handle: str, *, access_token: str, app_secret: str | None = None
    ) -> SendResult:
        """GET `check_batch_request_status` of one handle (per-item errors in `body`)."""
        return await self._request(
            "GET",
            f"{self._base}/{_path_segment(catalog_id)}/check_batch_request_status",
            access_token=access_token,
            app_secret=app_secret,
            extra_params={"handle": handle},
            headers=self._get_headers,
        )

    async def _request(
        self,
        method: str,
        url: str,
        *,
        access_token: str,
        app_secret: str | None,
        headers: Mapping[str, str],
        data: bytes | io.BytesIO | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> SendResult:
        params: dict[str, str] = dict(extra_params or {})
        params["access_token"] = access_token
        secrets = [access_token]
        if app_secret:
            proof = appsecret_proof(app_secret, access_token)
            params["appsecret_proof"] = proof
            secrets += [proof, app_secret]
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
                # A redirect target chosen by someone else would receive the token.
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                header_trace = resp.headers.get("x-fb-trace-id")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                content_type = resp.content_type
        except TimeoutError:
            # aiohttp's timeout errors subclass TimeoutError (= asyncio.TimeoutError on 3.11+).
            return _network_failure(f"timeout after {self._timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return _network_failure(_scrub(_describe(exc), secrets))
        return _result(status, raw, content_type, header_trace, retry_after, secrets)


def _result(
    status: int,
    raw: bytes,
    content_type: str,
    header_trace: str | None,
    retry_after: float | None,
    secrets: Sequence[str],
) -> SendResult:
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
        message = _scrub(_error_message(status, body, error, raw, content_type), secrets)
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


def _network_failure(message: str) -> SendResult:
    return SendResult(
        outcome=Outcome.RETRY,
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
    snippet = _WHITESPACE.sub(" ", raw[: _SNIPPET * 4].decode("utf-8", "replace")).strip()
    if len(snippet) > _SNIPPET:
        snippet = snippet[:_SNIPPET] + "..."
    kind = content_type or "no content type"
    return f"HTTP {status}: non-JSON answer ({kind}): {snippet}" if snippet else f"HTTP {status}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError) or (
            exc.os_error.errno == errno.ECONNREFUSED
        ):
            return f"connection refused by {exc.host}:{exc.port}"
        reason = exc.os_error.strerror or str(exc.os_error)
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: {exc}"
    # Some aiohttp texts span lines (parser errors draw a caret under the bad byte).
    text = _WHITESPACE.sub(" ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scrub(text: str, secrets: Sequence[str]) -> str:
    # aiohttp puts the full request URL, query included, into several exception texts.
    text = _TOKEN_IN_QUERY.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _path_segment(value: str) -> str:
    # A pixel id is digits; quoting keeps a malformed one from rewriting the path or query.
    return quote(value, safe="")


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


__all__ = ["GraphClient", "Outcome", "SendResult", "appsecret_proof", "classify"]
