"""A fake of Meta's Catalog Batch API on loopback, for tests and benchmarks.

    async with start_fake_catalog(token="T") as fake:
        fake.reject["sku-2"] = "The price is missing"   # a per-item error in the status
        fake.fail_next(1, status=500, code=2)           # the next items_batch call fails
        ...  # point the gateway's graph_url at fake.url
        assert fake.items["sku-1"]["price"] == "9.90 EUR"

`POST /{version}/{catalog_id}/items_batch` (`item_type=PRODUCT_ITEM`, `requests` of
CREATE/UPDATE/DELETE, ≤ 5,000) answers `{"handles": [...]}` and applies the accepted
requests to `items` (what the catalog holds); `GET /{version}/{catalog_id}/
check_batch_request_status?handle=` answers `{"data": [{"handle", "status", "errors",
"errors_total_count"}]}`, `in_progress` for the first `polls_before_finish` polls. A wrong
token gets code 190 (`fail_next` can give any code: 4/17/613 throttle, 190 expiry, 500s).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

MAX_REQUESTS = 5000


@dataclass(slots=True)
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    status: int = 200

    @property
    def requests(self) -> list[dict[str, Any]]:
        """An items_batch call's `requests` list."""
        value = (self.body or {}).get("requests")
        return value if isinstance(value, list) else []


@dataclass(slots=True)
class _Batch:
    catalog_id: str
    errors: list[dict[str, Any]]
    polls: int = 0


@dataclass
class FakeCatalog:
    """State and controls of the fake (see the module docstring)."""

    token: str | None = None
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    reject: dict[str, str] = field(default_factory=dict)
    polls_before_finish: int = 1
    _failures: list[dict[str, Any]] = field(default_factory=list)
    _batches: dict[str, _Batch] = field(default_factory=dict)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        code: int | None = None,
        message: str = "An unexpected error has occurred.",
        retry_after: str | None = None,
    ) -> None:
        """The next `n` items_batch calls fail with this status and Graph error."""
        for _ in range(n):
            self._failures.append(
                {"status": status, "code": code, "message": message, "retry_after": retry_after}
            )

    def batch_calls(self) -> list[Call]:
        """The items_batch calls received (failed ones too)."""
        return [c for c in self.calls if c.path.endswith("/items_batch")]

    def sent_requests(self) -> list[dict[str, Any]]:
        """Every request of every accepted items_batch call, in order."""
        return [r for c in self.batch_calls() if c.status == 200 for r in c.requests]

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/{version}/{catalog}/items_batch", self._items_batch)
        app.router.add_get("/{version}/{catalog}/check_batch_request_status", self._status)
        return app

    def _error(self, status: int, code: int | None, message: str) -> web.Response:
        error: dict[str, Any] = {"message": message, "type": "OAuthException"}
        if code is not None:
            error["code"] = code
        error["fbtrace_id"] = "FakeTrace"
        return web.json_response({"error": error}, status=status)

    def _token_error(self, request: web.Request) -> web.Response | None:
        if self.token is not None and request.query.get("access_token") != self.token:
            return self._error(
                400, 190, "Error validating access token: Session has expired on Tuesday."
            )
        return None

    async def _items_batch(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        call = Call(request.method, request.path, dict(request.query), body)
        self.calls.append(call)
        answer = self._answer_batch(request, call)
        call.status = answer.status
        return answer

    def _answer_batch(self, request: web.Request, call: Call) -> web.Response:
        if self._failures:
            failure = self._failures.pop(0)
            response = self._error(failure["status"], failure["code"], failure["message"])
            if failure["retry_after"]:
                response.headers["Retry-After"] = failure["retry_after"]
            return response
        refused = self._token_error(request)
        if refused is not None:
            return refused
        body = call.body or {}
        requests = call.requests
        if body.get("item_type") != "PRODUCT_ITEM" or not requests:
            return self._error(400, 100, "(#100) item_type and requests are required")
        if len(requests) > MAX_REQUESTS:
            return self._error(400, 100, f"(#100) at most {MAX_REQUESTS} requests per call")
        errors: list[dict[str, Any]] = []
        for line, entry in enumerate(requests):
            method = entry.get("method")
            data = entry.get("data") or {}
            item_id = str(data.get("id", ""))
            if method not in ("CREATE", "UPDATE", "DELETE") or not item_id:
                errors.append({"line": line, "id": item_id, "message": "Invalid request"})
            elif item_id in self.reject:
                errors.append({"line": line, "id": item_id, "message": self.reject[item_id]})
            elif method == "DELETE":
                self.items.pop(item_id, None)
            else:
                self.items[item_id] = {**self.items.get(item_id, {}), **data}
        handle = f"handle-{len(self._batches) + 1}"
        self._batches[handle] = _Batch(request.match_info["catalog"], errors)
        return web.json_response({"handles": [handle]})

    async def _status(self, request: web.Request) -> web.Response:
        call = Call(request.method, request.path, dict(request.query), None)
        self.calls.append(call)
        refused = self._token_error(request)
        if refused is not None:
            call.status = refused.status
            return refused
        batch = self._batches.get(request.query.get("handle", ""))
        if batch is None:
            call.status = 400
            return self._error(400, 100, "(#100) unknown handle")
        batch.polls += 1
        finished = batch.polls > self.polls_before_finish
        entry: dict[str, Any] = {
            "handle": request.query["handle"],
            "status": "finished" if finished else "in_progress",
        }
        if finished:
            entry["errors_total_count"] = len(batch.errors)
            entry["errors"] = batch.errors
        return web.json_response({"data": [entry]})


@contextlib.asynccontextmanager
async def start_fake_catalog(token: str | None = None) -> AsyncIterator[FakeCatalog]:
    """Serve a fake Catalog Batch API on 127.0.0.1 until the block ends."""
    fake = FakeCatalog(token=token)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()
