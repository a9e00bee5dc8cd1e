"""Client for the Conversions API endpoint of Meta's Graph API (its answers are read in
`graphanswers`)."""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from gateway.delivery.graphanswers import (
    Outcome,
    SendResult,
    classify,
    local_result,
    one_line,
    read_answer,
    scrub,
)
from gateway.delivery.retry import parse_retry_after
from gateway.pipeline import jsonfast


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
        # Compact UTF-8 straight to bytes keeps big batches small and cheap; aiohttp's json=
        # would use json.dumps' spaced defaults and an extra str -> bytes pass. No signature
        # covers these bytes (appsecret_proof signs the token).
        data = jsonfast.dumps_bytes(payload)
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
            return local_result(f"timeout after {self._timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return local_result(scrub(_describe(exc), secrets))
        return read_answer(status, raw, content_type, header_trace, retry_after, secrets)


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
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _path_segment(value: str) -> str:
    # A pixel id is digits; quoting keeps a malformed one from rewriting the path or query.
    return quote(value, safe="")


__all__ = ["GraphClient", "Outcome", "SendResult", "appsecret_proof", "classify"]
