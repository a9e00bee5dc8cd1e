"""A fake of Meta's Custom Audience API on loopback, for the audience sync's tests.

    async with start_fake_audiences(token=TOKEN) as fake:
        fake.fail_next(1, status=500, code=2, is_transient=True)
        ...  # graph_url = fake.url
        assert fake.members("1001") == {("<sha256>", "", ...)}

Serves `POST /{version}/act_{account}/customaudiences` (answers a new id) and
`POST` / `DELETE /{version}/{audience_id}/users` (form fields `payload` and `session`, as
Meta takes them), records every call, keeps each audience's rows, and fails on demand: the
next n calls answer a given HTTP status and Graph error (500, throttling 80003, token 190).
A wrong token answers 190 like Meta.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MAX_ROWS = 10_000


@dataclass
class UsersCall:
    """One /users call as received."""

    method: str
    audience_id: str
    schema: list[str]
    data: list[list[str]]
    session: dict[str, Any]
    access_token: str | None


@dataclass
class _Failure:
    status: int
    code: int | None
    is_transient: bool | None


@dataclass
class FakeAudiences:
    """The fake's state: what it received and what it holds."""

    token: str | None = None
    creates: list[dict[str, str]] = field(default_factory=list)
    calls: list[UsersCall] = field(default_factory=list)
    audiences: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)
    requests: int = 0
    url: str = ""
    _failures: deque[_Failure] = field(default_factory=deque)
    _users_failures: deque[_Failure] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        code: int | None = 2,
        is_transient: bool | None = None,
        users_only: bool = False,
    ) -> None:
        """Answer the next `n` calls (of /users only, with `users_only`) with this failure."""
        queue = self._users_failures if users_only else self._failures
        for _ in range(n):
            queue.append(_Failure(status, code, is_transient))

    def members(self, audience_id: str) -> set[tuple[str, ...]]:
        """The rows the audience holds after the adds and removes received."""
        return set(self.audiences.get(audience_id, set()))

    def users_calls(self, method: str | None = None) -> list[UsersCall]:
        """The /users calls received (of `method` only, when given)."""
        return [c for c in self.calls if method is None or c.method == method]

    def app(self) -> web.Application:
        """The aiohttp application of the fake."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{version}/act_{account}/customaudiences", self._create)
        app.router.add_route("POST", "/{version}/{audience_id}/users", self._users)
        app.router.add_route("DELETE", "/{version}/{audience_id}/users", self._users)
        return app

    def _refusal(
        self, request: web.Request, form: Any, *, users: bool = False
    ) -> web.Response | None:
        self.requests += 1
        failures = self._users_failures if users and self._users_failures else self._failures
        if failures:
            failure = failures.popleft()
            error: dict[str, Any] = {"message": "fake failure", "type": "OAuthException"}
            if failure.code is not None:
                error["code"] = failure.code
            if failure.is_transient is not None:
                error["is_transient"] = failure.is_transient
            error["fbtrace_id"] = "FakeTrace"
            return web.json_response({"error": error}, status=failure.status)
        token = request.query.get("access_token") or form.get("access_token")
        if self.token is not None and token != self.token:
            return web.json_response(
                {"error": {"message": "Error validating access token", "code": 190}},
                status=400,
            )
        return None

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        refused = self._refusal(request, form)
        if refused is not None:
            return refused
        fields = {k: str(v) for k, v in form.items()}
        missing = [k for k in ("name", "subtype", "customer_file_source") if not fields.get(k)]
        if missing or fields["subtype"] != "CUSTOM":
            return web.json_response(
                {"error": {"message": f"Invalid parameter {missing}", "code": 100}}, status=400
            )
        fields["account"] = request.match_info["account"]
        self.creates.append(fields)
        audience_id = str(next(self._ids))
        self.audiences[audience_id] = set()
        return web.json_response({"id": audience_id})

    async def _users(self, request: web.Request) -> web.Response:
        form = await request.post()
        refused = self._refusal(request, form, users=True)
        if refused is not None:
            return refused
        audience_id = request.match_info["audience_id"]
        if audience_id not in self.audiences:
            return web.json_response(
                {
                    "error": {
                        "message": "Unsupported request: no such object",
                        "code": 100,
                        "error_subcode": 33,
                    }
                },
                status=400,
            )
        payload = json.loads(str(form["payload"]))
        session = json.loads(str(form.get("session", "{}")))
        data = payload["data"]
        if len(data) > MAX_ROWS or any(len(r) != len(payload["schema"]) for r in data):
            return web.json_response(
                {"error": {"message": "Invalid parameter: payload rows", "code": 100}}, status=400
            )
        self.calls.append(
            UsersCall(
                request.method,
                audience_id,
                payload["schema"],
                data,
                session,
                request.query.get("access_token"),
            )
        )
        rows = {tuple(r) for r in data}
        if request.method == "POST":
            self.audiences[audience_id] |= rows
        else:
            self.audiences[audience_id] -= rows
        return web.json_response(
            {
                "audience_id": audience_id,
                "session_id": session.get("session_id"),
                "num_received": len(data),
                "num_invalid_entries": 0,
                "invalid_entry_samples": {},
            }
        )


@contextlib.asynccontextmanager
async def start_fake_audiences(token: str | None = None) -> AsyncIterator[FakeAudiences]:
    """Run the fake on 127.0.0.1 (a free port) for the duration of the block."""
    fake = FakeAudiences(token=token)
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
