"""The asset lane's status line and header block, framed as aiohttp's StreamResponse would
frame them (RFC 9112 §6) and handed straight to the request's StreamWriter.

A StreamResponse per asset cost its construction, its header preparation (a dozen
case-insensitive lookups) and two coroutines; the lane needs only the framing decisions:
Content-Length or chunks (HTTP/1.1) or a close-delimited body (HTTP/1.0), no body for
HEAD/1xx/204/304, the Date, Server and Content-Type aiohttp adds when the site sent none,
and the Connection field for the keep-alive decision. `Sent` is what aiohttp's
RequestHandler gets back in place of a response.
"""

from __future__ import annotations

from typing import cast

import aiohttp
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import StreamWriter, _serialize_headers
from multidict import CIMultiDict
from yarl import URL

from gateway.edge import headers as hdr
from gateway.edge.lanewire import Framing
from gateway.edge.passthrough import NO_BODY_STATUS, Answer
from gateway.edge.upstream import UpstreamResponse

_V11 = aiohttp.HttpVersion11


class Sent:
    """What the lane hands back to aiohttp's RequestHandler: an answer already written.

    The handler calls `prepare` and `write_eof` on whatever it gets (both no-ops here),
    reads `keep_alive` to decide on the connection, and an access logger may read
    `status`, `body_length` and `headers`. A `StreamResponse` would cost its own
    construction and header preparation on every asset.
    """

    __slots__ = ("body_length", "headers", "keep_alive", "status")
    prepared = True

    def __init__(self, status: int, headers: hdr.Headers, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_length = 0

    async def prepare(self, request: web.BaseRequest) -> None:
        """Nothing left to prepare: the status line and headers are out."""

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to end: the body (or its absence) is out."""


def head_rewritten(
    request: web.Request, upstream: Answer, origin: URL, scheme: str, host: str
) -> Sent:
    """The status line and the site's fields, minus what is hop-by-hop (the relay's rules),
    framed as aiohttp's StreamResponse would frame them (RFC 9112 §6), handed to the writer.

    A body-less answer is written whole here (`body_length` -1: nothing more to send).
    """
    status = upstream.status
    headers = CIMultiDict(upstream.headers)
    hdr.drop_hop_by_hop(headers)
    hdr.rewrite_locations(headers, origin, lambda: f"{scheme}://{host}")
    if status == 304:
        hdr.weaken_revalidated(headers, request.headers.getall("If-None-Match", ()))
    version = request.version
    keep_alive = request.keep_alive
    writer = cast(StreamWriter, request._payload_writer)
    no_body = request.method == "HEAD" or status in NO_BODY_STATUS or status < 200
    if no_body:
        if status in NO_BODY_STATUS or status < 200:
            headers.popall("Content-Length", None)
    else:
        length = headers.get("Content-Length")
        if length is None:
            if version >= _V11:
                writer.enable_chunking()
                headers["Transfer-Encoding"] = "chunked"
            else:
                # HTTP/1.0 has no chunks: the body ends when the connection does.
                keep_alive = False
        else:
            writer.length = int(length)
        if length != "0" and "Content-Type" not in headers:
            headers["Content-Type"] = "application/octet-stream"
    if "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    if "Server" not in headers:
        headers["Server"] = SERVER_SOFTWARE
    if keep_alive:
        if version < _V11:
            headers["Connection"] = "keep-alive"
    elif version >= _V11:
        headers["Connection"] = "close"
    sent = Sent(status, headers, keep_alive)
    # What StreamWriter.write_headers does, without a coroutine: serialized in C (refuses
    # CR/LF in names and values), sent with the first body chunk or the end.
    writer._headers_buf = _serialize_headers(
        f"HTTP/{version[0]}.{version[1]} {status} {upstream.reason}", headers
    )
    writer._headers_written = False
    if no_body:
        writer.set_eof()
        sent.body_length = -1
        return sent
    content = upstream.content
    if not (content.total_bytes > 0 or content.is_eof()):
        # A body still on its way (a stream of events): its headers go at once.
        writer.send_headers()
    return sent


def head_copied(
    request: web.Request, upstream: UpstreamResponse, lines: list[bytes], framing: Framing
) -> Sent:
    """`head_rewritten` for fields copied on the wire (`lanewire.client_response`): a status with a
    body, no field to rewrite."""
    # The same framing decisions as head_rewritten's, over byte lines: keep the two in
    # step (test_lane.py: HTTP/1.0, chunks, HEAD). One shared function cost ~6 k
    # instructions per asset, 2 % (callgrind_proxy.py), on the path most requests take.
    version = request.version
    keep_alive = request.keep_alive
    writer = cast(StreamWriter, request._payload_writer)
    length = framing.length
    if length is None:
        if version >= _V11:
            writer.enable_chunking()
            lines.append(b"Transfer-Encoding: chunked")
        else:
            keep_alive = False  # HTTP/1.0: the body ends when the connection does
    else:
        writer.length = int(length)
    if framing.type is None and length != b"0":
        lines.append(b"Content-Type: application/octet-stream")
    if not framing.date:
        lines.append(b"Date: " + rfc822_formatted_time().encode("ascii"))
    if not framing.server:
        lines.append(_SERVER_LINE)
    if keep_alive:
        if version < _V11:
            lines.append(b"Connection: keep-alive")
    elif version >= _V11:
        lines.append(b"Connection: close")
    status = upstream.status
    lines.insert(0, f"HTTP/{version[0]}.{version[1]} {status} {upstream.reason}".encode())
    lines.append(b"\r\n")
    writer._headers_buf = b"\r\n".join(lines)
    writer._headers_written = False
    content = upstream.content
    if not (content.total_bytes > 0 or content.is_eof()):
        writer.send_headers()  # a body still on its way: its headers go at once
    return Sent(status, upstream.headers, keep_alive)


_SERVER_LINE = b"Server: " + SERVER_SOFTWARE.encode("ascii")
