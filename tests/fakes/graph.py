"""A fake of the Graph API's Conversions API endpoint, for tests and benchmarks.

In-process::

    async with start_fake_graph() as fake:
        fake.fail_next(2, status=500, code=2, is_transient=True)
        ...  # point a GraphClient at fake.url
        assert fake.event_ids() == [...]

As a separate process (the benchmark)::

    python -m tests.fakes.graph --port 0 [--count-only] [--token T] [--latency S]

prints ``listening on http://127.0.0.1:N`` and serves until SIGTERM. Control endpoints:

- ``POST /_fake/fail`` with any of ``{"fail_next": {"n": 1, "status": 500, "code": ...,
  "subcode": ..., "is_transient": ..., "message": ..., "retry_after": ..., "body": ...}}``
  (the keys of ``fail_next`` may also be given at the top level),
  ``{"hang_next": {"n": 1, "seconds": 5}}``, ``{"reject_event_ids": ["id", ...]}``,
  ``{"token": "..." | null}``, ``{"latency": 0.05}``;
- ``GET /_fake/requests`` -> JSON list of the recorded requests (empty in count-only mode);
- ``GET /_fake/events`` -> JSON list of accepted events (empty in count-only mode);
- ``GET /_fake/stats`` -> ``{"requests", "accepted_requests", "failed_requests",
  "events_received"}``;
- ``POST /_fake/reset`` -> back to the state the fake was started with.

The fake validates only what matters for delivery logic (the shape of ``data`` and the
three required fields); its error subcodes are not Meta's exact ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

MAX_EVENTS = 1000
MAX_AGE = 7 * 86_400
REJECT_SUBCODE = 2804001
INVALID_SUBCODE = 2804001

EventPredicate = Callable[[Mapping[str, Any]], bool]

_DEFAULT_MESSAGES: dict[int, tuple[str, str]] = {
    1: ("OAuthException", "An unknown error has occurred."),
    2: ("OAuthException", "An unexpected error has occurred. Please retry your request later."),
    4: ("OAuthException", "Application request limit reached"),
    10: ("OAuthException", "Application does not have permission for this action"),
    17: ("OAuthException", "User request limit reached"),
    32: ("OAuthException", "Page request limit reached"),
    100: ("OAuthException", "Invalid parameter"),
    190: (
        "OAuthException",
        "Error validating access token: Session has expired on Tuesday, 01-Jan-30 00:00:00 "
        "PST. The current time is Wednesday, 02-Jan-30 00:00:00 PST.",
    ),
    200: ("OAuthException", "Permissions error"),
    368: (
        "OAuthException",
        "The action attempted has been deemed abusive or is otherwise disallowed",
    ),
    613: ("OAuthException", "Calls to this api have exceeded the rate limit."),
    80004: (
        "OAuthException",
        "There have been too many calls to this ad-account. Wait a bit and try again.",
    ),
}

_LB_HTML = (
    "<!DOCTYPE html>\n<html><head><title>{status} Error</title></head>\n"
    "<body><h1>{status}</h1><p>The upstream server did not answer.</p></body></html>\n"
)


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake received, and what it answered."""

    method: str
    version: str
    pixel_id: str
    query: dict[str, str]
    body: dict[str, Any] | None
    form: bool
    status: int = 0
    received_at: float = field(default_factory=time.time)
    answered_at: float | None = None  # when the answer was decided (time.time())

    @property
    def access_token(self) -> str | None:
        """The token from the query string, else from a form body."""
        if "access_token" in self.query:
            return self.query["access_token"]
        token = (self.body or {}).get("access_token")
        return token if isinstance(token, str) else None

    @property
    def appsecret_proof(self) -> str | None:
        """The appsecret_proof from the query string, else from a form body."""
        if "appsecret_proof" in self.query:
            return self.query["appsecret_proof"]
        proof = (self.body or {}).get("appsecret_proof")
        return proof if isinstance(proof, str) else None

    @property
    def data(self) -> list[Any]:
        """The request's ``data`` array, or [] when it had none."""
        data = (self.body or {}).get("data")
        return data if isinstance(data, list) else []

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable copy, for ``GET /_fake/requests``."""
        return asdict(self)


@dataclass(slots=True)
class _Failure:
    status: int
    code: int | None
    subcode: int | None
    is_transient: bool | None
    message: str | None
    retry_after: float | str | None
    body: str | None


class FakeGraph:
    """State and request handlers of the fake; serve it with `start_fake_graph`."""

    def __init__(
        self, *, token: str | None = None, count_only: bool = False, latency: float = 0.0
    ) -> None:
        self.count_only = count_only
        self.url = ""
        self._initial = (token, latency)
        self.token = token
        self.latency = latency
        self.requests: list[RecordedRequest] = []
        self._events: list[dict[str, Any]] = []
        self._failures: deque[_Failure] = deque()
        self._hangs: deque[float] = deque()
        self._reject_ids: set[str] = set()
        self._reject_predicates: list[EventPredicate] = []
        self.request_count = 0
        self.accepted_requests = 0
        self.failed_requests = 0
        self.events_received = 0
        # Set on shutdown so that hung handlers end at once instead of holding up cleanup.
        self._closing = asyncio.Event()

    # -- test controls -------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        code: int | None = None,
        subcode: int | None = None,
        is_transient: bool | None = None,
        message: str | None = None,
        retry_after: float | str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next n requests with this error.

        With a ``code``, the answer is a Graph API JSON error; without one it is an HTML page
        like a load balancer's. ``body`` replaces the answer's text verbatim.
        """
        failure = _Failure(status, code, subcode, is_transient, message, retry_after, body)
        self._failures.extend([failure] * n)

    def hang_next(self, n: int, seconds: float) -> None:
        """Make the next n requests wait `seconds` before being handled."""
        self._hangs.extend([seconds] * n)

    def reject_event(self, predicate: EventPredicate) -> None:
        """Fail every batch holding an event for which `predicate` is true, naming its index."""
        self._reject_predicates.append(predicate)

    def reject_event_ids(self, event_ids: Any) -> None:
        """Fail every batch holding an event with one of these event_ids."""
        self._reject_ids.update(str(event_id) for event_id in event_ids)

    def reset(self) -> None:
        """Forget all requests, events, failures and rejections; restore the initial settings."""
        self.token, self.latency = self._initial
        self.requests.clear()
        self._events.clear()
        self._failures.clear()
        self._hangs.clear()
        self._reject_ids.clear()
        self._reject_predicates.clear()
        self.request_count = self.accepted_requests = self.failed_requests = 0
        self.events_received = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        """All events of successful requests, in arrival order."""
        return self._events

    def event_ids(self) -> list[Any]:
        """The event_id of every accepted event, in arrival order."""
        return [event.get("event_id") for event in self._events]

    def stats(self) -> dict[str, int]:
        """Request and event counters (kept in count-only mode too)."""
        return {
            "requests": self.request_count,
            "accepted_requests": self.accepted_requests,
            "failed_requests": self.failed_requests,
            "events_received": self.events_received,
        }

    def close(self) -> None:
        """Release handlers that are still hanging."""
        self._closing.set()

    # -- the app -------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        # The control routes come first: the API routes below would also match them.
        app.router.add_post("/_fake/fail", self._control_fail)
        app.router.add_post("/_fake/reset", self._control_reset)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_get("/_fake/events", self._control_events)
        app.router.add_get("/_fake/stats", self._control_stats)
        app.router.add_post("/{version:v[0-9]+\\.[0-9]+}/{pixel_id}/events", self._post_events)
        app.router.add_get("/{version:v[0-9]+\\.[0-9]+}/{pixel_id}", self._get_pixel)
        return app

    async def _post_events(self, request: web.Request) -> web.Response:
        body: dict[str, Any] | None
        form = request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
        problem: str | None = None
        if form:
            body = {key: value for key, value in (await request.post()).items()}
            if isinstance(body.get("data"), str):
                try:
                    body["data"] = json.loads(body["data"])
                except ValueError:
                    problem = "Invalid parameter: data is not valid JSON"
        else:
            try:
                parsed = json.loads(await request.read())
            except ValueError:
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
            if body is None:
                problem = "Invalid parameter: the request body is not a JSON object"
        record = self._record(request, body, form)
        early = await self._preamble(request, record, body if form else None)
        if early is not None:
            return early
        data = (body or {}).get("data")
        if problem is None:
            problem = _validate(data, time.time())
        if problem is not None:
            return self._finish(record, _graph_error(400, 100, INVALID_SUBCODE, problem))
        assert isinstance(data, list)
        rejected = self._rejected_index(data)
        if rejected is not None:
            event_id = data[rejected].get("event_id")
            message = f"Invalid parameter: data[{rejected}] was rejected (event_id {event_id!r})"
            return self._finish(record, _graph_error(400, 100, REJECT_SUBCODE, message))
        trace = _trace_id()
        self.events_received += len(data)
        if not self.count_only:
            self._events.extend(data)
        answer = {"events_received": len(data), "messages": [], "fbtrace_id": trace}
        return self._finish(record, _json(200, answer, trace))

    async def _get_pixel(self, request: web.Request) -> web.Response:
        record = self._record(request, None, form=False)
        early = await self._preamble(request, record)
        if early is not None:
            return early
        trace = _trace_id()
        return self._finish(record, _json(200, {"id": record.pixel_id}, trace))

    def _record(
        self, request: web.Request, body: dict[str, Any] | None, form: bool
    ) -> RecordedRequest:
        self.request_count += 1
        record = RecordedRequest(
            method=request.method,
            version=request.match_info["version"],
            pixel_id=request.match_info["pixel_id"],
            query=dict(request.query),
            body=None if self.count_only else body,
            form=form,
        )
        if not self.count_only:
            self.requests.append(record)
        return record

    async def _preamble(
        self,
        request: web.Request,
        record: RecordedRequest,
        form_body: Mapping[str, Any] | None = None,
    ) -> web.Response | None:
        """Latency, hangs, injected failures and the token check, in the order Meta would."""
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self._hangs:
            seconds = self._hangs.popleft()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        if self._failures:
            return self._finish(record, _failure_response(self._failures.popleft()))
        if self.token is not None:
            given = request.query.get("access_token")
            if given is None and form_body is not None:
                # The real API also takes the token as a form field.
                token = form_body.get("access_token")
                given = token if isinstance(token, str) else None
            if given != self.token:
                return self._finish(record, _graph_error(400, 190, 463, None))
        return None

    def _rejected_index(self, data: list[Any]) -> int | None:
        if not self._reject_ids and not self._reject_predicates:
            return None
        for index, event in enumerate(data):
            if str(event.get("event_id")) in self._reject_ids:
                return index
            if any(predicate(event) for predicate in self._reject_predicates):
                return index
        return None

    def _finish(self, record: RecordedRequest, response: web.Response) -> web.Response:
        record.status = response.status
        record.answered_at = time.time()
        if 200 <= response.status < 300:
            self.accepted_requests += 1
        else:
            self.failed_requests += 1
        return response

    async def _control_fail(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(spec, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        fail = spec.get("fail_next")
        if fail is None and ("n" in spec or "status" in spec or "code" in spec):
            fail = {k: v for k, v in spec.items() if k in _FAIL_KEYS}
        try:
            if fail is not None:
                self.fail_next(**fail)
            if "hang_next" in spec:
                self.hang_next(**spec["hang_next"])
            if "reject_event_ids" in spec:
                self.reject_event_ids(spec["reject_event_ids"])
            if "token" in spec:
                self.token = spec["token"]
            if "latency" in spec:
                self.latency = float(spec["latency"])
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.to_json() for record in self.requests])

    async def _control_events(self, request: web.Request) -> web.Response:
        return web.json_response(self._events)

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


_FAIL_KEYS = frozenset(
    {"n", "status", "code", "subcode", "is_transient", "message", "retry_after", "body"}
)


def _validate(data: Any, now: float) -> str | None:
    """Meta's checks that reject a whole batch, as an error message naming the path."""
    if not isinstance(data, list) or not data:
        return "Invalid parameter: data must be a non-empty array of events"
    if len(data) > MAX_EVENTS:
        return f"Invalid parameter: data holds {len(data)} events, at most {MAX_EVENTS} allowed"
    oldest = now - MAX_AGE
    for index, event in enumerate(data):
        if not isinstance(event, dict):
            return f"Invalid parameter: data[{index}] must be an object"
        name = event.get("event_name")
        if not isinstance(name, str) or not name:
            return f"Invalid parameter: data[{index}].event_name is required"
        event_time = event.get("event_time")
        if event_time is None:
            return f"Invalid parameter: data[{index}].event_time is required"
        if not isinstance(event_time, int) or isinstance(event_time, bool):
            return f"Invalid parameter: data[{index}].event_time must be an integer (Unix seconds)"
        if event_time < oldest:
            return (
                f"Invalid parameter: data[{index}].event_time {event_time} is more than "
                "7 days in the past"
            )
        source = event.get("action_source")
        if not isinstance(source, str) or not source:
            return f"Invalid parameter: data[{index}].action_source is required"
    return None


def _trace_id() -> str:
    return "A" + secrets.token_urlsafe(16)


def _json(
    status: int, payload: Any, trace: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    all_headers = {"x-fb-trace-id": trace, **(headers or {})}
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=all_headers,
    )


def _graph_error(
    status: int,
    code: int,
    subcode: int | None,
    message: str | None,
    *,
    is_transient: bool | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    kind, default = _DEFAULT_MESSAGES.get(code, ("OAuthException", f"Error {code}"))
    trace = _trace_id()
    error: dict[str, Any] = {"message": message or default, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = bool(is_transient) if is_transient is not None else code in (1, 2)
    error["fbtrace_id"] = trace
    return _json(status, {"error": error}, trace, headers)


def _failure_response(failure: _Failure) -> web.Response:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        retry_after = failure.retry_after
        if isinstance(retry_after, float) and retry_after.is_integer():
            retry_after = int(retry_after)
        headers["Retry-After"] = str(retry_after)
    if failure.body is not None:
        headers["x-fb-trace-id"] = _trace_id()
        return web.Response(status=failure.status, text=failure.body, headers=headers)
    if failure.code is None and failure.is_transient is None:
        # No Graph error at all: the answer a load balancer in front of Graph would give.
        headers["x-fb-trace-id"] = _trace_id()
        html = _LB_HTML.format(status=failure.status)
        return web.Response(
            status=failure.status, text=html, content_type="text/html", headers=headers
        )
    return _graph_error(
        failure.status,
        failure.code if failure.code is not None else 1,
        failure.subcode,
        failure.message,
        is_transient=failure.is_transient,
        headers=headers,
    )


@contextlib.asynccontextmanager
async def start_fake_graph(
    *,
    token: str | None = None,
    count_only: bool = False,
    latency: float = 0.0,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[FakeGraph]:
    """Serve a FakeGraph on loopback for the duration of the block; ``fake.url`` is its root."""
    fake = FakeGraph(token=token, count_only=count_only, latency=latency)
    runner = web.AppRunner(
        fake.app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    fake.url = f"http://{host}:{sock.getsockname()[1]}"
    try:
        yield fake
    finally:
        fake.close()
        await runner.cleanup()
        sock.close()


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with start_fake_graph(
        token=args.token,
        count_only=args.count_only,
        latency=args.latency,
        host=args.host,
        port=args.port,
    ) as fake:
        print(f"listening on {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.graph", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--count-only", action="store_true", help="keep counters, not requests or events"
    )
    parser.add_argument("--token", default=None, help="the only access_token accepted")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
