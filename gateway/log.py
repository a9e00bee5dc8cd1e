"""Logging: JSON lines for machines (default off a TTY), readable text on a terminal.

Every record logged while a request is handled carries that request's id (`request_id`),
taken from the `X-Request-ID` of a trusted proxy or generated; `request_id_middleware`
sets it and returns it on the gateway's own responses. Records may add the event ids they
are about with ``extra={"event_id": ...}`` or ``extra={"event_ids": [...]}``; those, and
a few other non-personal fields, become JSON keys. Tokens that slip into a message are
masked as a last line of defence: callers must still never log tokens or customer data.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from gateway.edge.identity import networks, trusted_peer

REQUEST_ID_HEADER = "X-Request-ID"

# The id of the request being handled, for every log record made on its behalf (tasks
# started by the request inherit it).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Ids from a proxy are written into logs verbatim: a strict alphabet keeps them from
# forging log lines or carrying anything but an identifier.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
# Record attributes (from `extra=`) that become JSON keys; all are identifiers, never PII.
_EXTRA_KEYS = ("event_id", "event_ids", "pixel_id", "fbtrace_id", "rule", "worker")
_SECRET_IN_TEXT = re.compile(
    r"((?:access_token|appsecret_proof|api_key|token)=)[^&\s'\"<>]+"
    r"|(Bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|\bEAA[A-Za-z0-9]{20,}",
    flags=re.IGNORECASE,
)


def scrub(text: str) -> str:
    """Mask access tokens, appsecret proofs and Bearer keys in a log message."""
    return _SECRET_IN_TEXT.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2)
    return f"{prefix}***" if prefix else "EAA***"


class _RequestIdFilter(logging.Filter):
    """Stamps records with the current request id (handlers run in the logging thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, request id, event ids."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": scrub(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message [request id]` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one readable line (plus a traceback, if any)."""
        text = scrub(super().format(record))
        rid = getattr(record, "request_id", None)
        extras = [f"{key}={getattr(record, key)}" for key in _EXTRA_KEYS if hasattr(record, key)]
        if rid is not None:
            extras.insert(0, f"request_id={rid}")
        if not extras:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(extras)}]{newline}{rest}"


class ClientNoiseFilter(logging.Filter):
    """What clients cause in aiohttp's server log, counted and summed up in a quiet line.

    A malformed request (aiohttp answers 400) or a visitor leaving mid-response is the
    Internet being itself, not a fault: neither may write a traceback, and a parser error
    quotes the request line and headers (cookies, emails in query strings), which never
    reach the log. At most one line per kind and `interval` seconds, with the count.
    """

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.counts: dict[str, int] = {"malformed": 0, "disconnect": 0}
        self._unreported: dict[str, int] = {"malformed": 0, "disconnect": 0}
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record to drop; a client's record is rewritten into the summary."""
        kind = _client_noise(record)
        if kind is None:
            return True
        self.counts[kind] += 1
        self._unreported[kind] += 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            return False
        self._last[kind] = now
        count, self._unreported[kind] = self._unreported[kind], 0
        name = type(record.exc_info[1]).__name__ if record.exc_info else "?"
        what = (
            "malformed request(s) answered 400"
            if kind == "malformed"
            else "client(s) left before their response was complete"
        )
        record.msg = "%d %s (last: %s); the next are summed up after %d s."
        record.args = (count, what, name, int(self.interval))
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        return True


def _client_noise(record: logging.LogRecord) -> str | None:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        return "malformed"
    if isinstance(exc, ConnectionError):
        return "disconnect"
    return None


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would log every proxied URL, query strings included.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, ClientNoiseFilter)]
    server.addFilter(ClientNoiseFilter())
    # aiosqlite's debug records repeat every statement with its parameters: event payloads
    # (hashed identifiers, page URLs) and lease owners, at several lines per request.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


# Request ids ---------------------------------------------------------------------------


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, like nginx's `$request_id`.

    An id names a request in the logs, it guards nothing: the random module (reseeded in
    every forked worker) gives one without the system call `secrets` makes per request.
    """
    return f"{random.getrandbits(128):032x}"


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a usable request id, else None."""
    if value is None:
        return None
    value = value.strip()
    return value if _VALID_REQUEST_ID.fullmatch(value) else None


def request_id_for(request: web.BaseRequest, trusted_proxies: Sequence[str]) -> str:
    """The id of a request: a trusted proxy's `X-Request-ID` (a plain identifier), else new."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _peer_trusted(request.remote, trusted_proxies):
        return valid_request_id(given) or new_request_id()
    return new_request_id()


@contextlib.contextmanager
def identified(request: web.BaseRequest, trusted_proxies: Sequence[str]) -> Iterator[str]:
    """The request's id (`request_id_for`) set for the log records made inside the block."""
    rid = request_id_for(request, trusted_proxies)
    token = request_id.set(rid)
    try:
        yield rid
    finally:
        request_id.reset(token)


def request_id_middleware(
    trusted_proxies: Callable[[], Sequence[str]],
    check: Callable[[web.Request], web.StreamResponse | None] | None = None,
) -> Middleware:
    """Middleware giving every request an id for its log records.

    The id is the `X-Request-ID` header when the peer is one of `trusted_proxies()` (read
    on each request, so a reload applies) and the value is a plain identifier; otherwise a
    new one. Responses the gateway makes itself (its endpoints, its own error pages for
    proxied requests) return it as `X-Request-ID`; responses streamed from the site are
    passed on as the site sent them. `check`, when given, may answer a request itself
    before the handler sees it (a 431): one middleware fewer on every request.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id_for(request, trusted_proxies())
        token = request_id.set(rid)
        try:
            refused = check(request) if check is not None else None
            response = await handler(request) if refused is None else refused
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        finally:
            request_id.reset(token)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
        return response

    return middleware


def _peer_trusted(peer: str | None, cidrs: Sequence[str]) -> bool:
    return trusted_peer(peer, networks(tuple(cidrs)))
