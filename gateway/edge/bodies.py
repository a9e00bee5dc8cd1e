"""A request body's bounded copy in, its form or JSON fields out (for rules that read them).

The body itself always goes to the site whole and unchanged; rules see at most the first
`rules_body_bytes` of it. Multipart file parts are skipped, never read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from aiohttp import StreamReader

from gateway.pipeline.values import parse_json_text


class BodyCopy:
    """The first `limit` bytes of a request body, for form and JSON rules."""

    __slots__ = ("data", "limit", "truncated")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        """Keep what fits; note that the rest was cut."""
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True


def read_fields(copy: BodyCopy, content_type: str | None) -> tuple[dict[str, list[str]], Any]:
    """(form fields, JSON document or None) of a copied body; never raises on client input."""
    if not copy.data:
        return {}, None
    media = media_type(content_type)
    data = bytes(copy.data)
    if media == "application/x-www-form-urlencoded":
        text = data.decode("utf-8", "replace")
        try:
            return parse_qs(text, keep_blank_values=True, max_num_fields=1000), None
        except ValueError:
            return {}, None  # more fields than any real form has
    if media == "multipart/form-data":
        return _multipart(data, content_type or ""), None
    if media == "application/json" or media.endswith("+json"):
        if copy.truncated:
            return {}, None  # half a JSON document is no document
        return {}, parse_json_text(data.decode("utf-8", "replace"))
    return {}, None


def media_type(content_type: str | None) -> str:
    """`text/html; charset=utf-8` → `text/html`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _multipart(data: bytes, content_type: str) -> dict[str, list[str]]:
    """Field values of a multipart/form-data body; file parts are skipped, never read."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return {}
    out: dict[str, list[str]] = {}
    for part in data.split(b"--" + boundary.encode("utf-8", "replace"))[1:]:
        head, sep, body = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disposition = line.split(":", 1)[1]
        params = _disposition(disposition)
        if "name" not in params or "filename" in params:
            continue
        content = body[:-2] if body.endswith(b"\r\n") else body
        out.setdefault(params["name"], []).append(content.decode("utf-8", "replace"))
    return out


def _disposition(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in value.split(";")[1:]:
        name, _, raw = item.partition("=")
        params[name.strip().lower()] = raw.strip().strip('"')
    return params


async def read_whole(content: StreamReader, limit: int) -> bytes | None:
    """The whole body, however many reads it takes, or None as soon as it passes `limit`.

    `StreamReader.read(n)` answers with what one network read brought, so a body split
    across TCP segments (a 5 ms gap is enough) would otherwise arrive cut short.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
