"""Takes decoded HTML bytes in chunks, gives them back with one tag inserted at the head's start.

Where the tag goes follows the HTML parser, not a text search, so that streaming never has to
look far ahead:

* Before the first element, only a UTF-8 BOM, whitespace, comments, `<!DOCTYPE>`, `<?...>` and
  other bogus comments are skipped. Their bytes are emitted as soon as each one is complete.
* `<html ...>` or `<head ...>` (any case, with attributes; `<header>` is another element) sets a
  candidate point right after the tag. If `<head>` follows `<html>`, the candidate moves after
  it. If a `<meta charset>` / `<meta http-equiv>` follows (only whitespace or comments in
  between; other `<meta>` tags ending within the first 1024 bytes are stepped over), the tag goes
  after that meta so the charset declaration stays where the browser's prescan finds it.
  Anything else decides: the tag goes to the candidate point.
* Any other first element or text: the tag goes right before it. Browsers open the head
  implicitly there and ignore a later `<head>`, so a `<head>` behind a `<header>`, a `<script>`
  (even in a string) or a comment is never the insertion point, and scripts, styles, titles and
  attribute values are never entered.

Nothing that could still become the insertion point is emitted early; after the insertion every
chunk passes through untouched. If no decision is reached within `max_scan` input bytes (for
example a huge leading comment), or the body starts like UTF-16/UTF-32, the body passes through
unchanged and `gave_up` is set. After `<html>`/`<head>` the candidate point is safe, so reaching
`max_scan` there inserts at it instead of giving up.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["HeadInjector", "html_charset_is_ascii_compatible"]

_WS = re.compile(rb"[\t\n\f\r ]*+")
_NAME = re.compile(rb"[A-Za-z][^\t\n\f\r />]*+")
# The rest of a start tag up to its closing ">", by the HTML tokenizer's rules: a quote opens a
# value only right after "=", an unquoted value ends at whitespace or ">". Possessive quantifiers
# keep a tag that is still incomplete from backtracking.
_TAG_REST = re.compile(
    rb"""(?:[^>"'=]++"""
    rb"""|=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))"""
    rb"""|["'])*+>"""
)
_COMMENT_END = re.compile(rb"--!?>")
_CHARSET_META = re.compile(rb"(?i)charset|http-equiv")
_UTF8_BOM = b"\xef\xbb\xbf"
# The browser's charset prescan looks at this many bytes.
_PRESCAN = 1024

_PROLOG, _AFTER, _DONE = 0, 1, 2
_MORE, _GIVE_UP, _NOWHERE = -1, -2, -3
_SKIP, _START, _CONTENT = 1, 2, 3


class HeadInjector:
    """Feed decoded HTML bytes, get bytes out; inserts `tag` exactly once."""

    __slots__ = (
        "_base",
        "_buf",
        "_cand",
        "_head_ok",
        "_hint",
        "_max_scan",
        "_phase",
        "_pos",
        "_seen",
        "_started",
        "_tag",
        "gave_up",
        "injected",
    )

    def __init__(self, tag: bytes, *, max_scan: int = 65536) -> None:
        self._tag = tag
        self._max_scan = max_scan
        self._buf: bytes | bytearray = b""  # input not emitted yet
        self._base = 0  # absolute offset of _buf[0] in the body
        self._pos = 0  # scan position in _buf: start of the next (or incomplete) token
        self._cand = 0  # _AFTER: insertion candidate in _buf; bytes from here are held
        self._head_ok = False  # _AFTER: a <head> may still move the candidate
        self._hint = 0  # bytes of the incomplete token already searched, to avoid rescans
        self._seen = 0
        self._started = False  # BOM / UTF-16 check done
        self._phase = _PROLOG
        self.injected = False
        self.gave_up = False

    def feed(self, chunk: bytes) -> bytes:
        """Return what can be emitted now; after the insertion that is `chunk` itself."""
        if self._phase == _DONE:
            return chunk
        if not chunk:
            return b""
        if self._buf:
            if isinstance(self._buf, bytes):
                self._buf = bytearray(self._buf)  # amortised appends while a token is held
            self._buf += chunk
        else:
            self._buf = chunk
        self._seen += len(chunk)
        return self._step(final=False)

    def finish(self) -> bytes:
        """Flush the held bytes at the end of the body (inserting at a pending candidate)."""
        if self._phase == _DONE:
            return b""
        return self._step(final=True)

    def _step(self, *, final: bool) -> bytes:
        where = self._scan()
        if where == _MORE and final:
            where = self._cand if self._phase == _AFTER else _NOWHERE
        elif where == _MORE and self._seen >= self._max_scan:
            # The decision needs bytes past the window. A candidate after <html>/<head> is
            # still a safe point; without one, give up.
            where = self._cand if self._phase == _AFTER else _GIVE_UP
        if where == _MORE:
            return self._emit(self._cand if self._phase == _AFTER else self._pos)
        buf = self._buf
        self._buf = b""
        self._phase = _DONE
        if where < 0:
            self.gave_up = where == _GIVE_UP
            return bytes(buf)
        self.injected = True
        # Views, not slices: the page is copied once, into the joined result.
        with memoryview(buf) as view:
            return b"".join((view[:where], self._tag, view[where:]))

    def _emit(self, upto: int) -> bytes:
        if upto <= 0:
            return b""
        out = bytes(self._buf[:upto])
        self._buf = self._buf[upto:]
        self._base += upto
        self._pos -= upto
        self._cand -= upto
        return out

    def _scan(self) -> int:
        """Advance over complete tokens; return an insertion index or a negative code."""
        buf = self._buf
        # Look no further than max_scan bytes into the body, however the chunks fall: the
        # outcome then never depends on chunk boundaries.
        n = min(len(buf), self._max_scan - self._base)
        if not self._started:
            if n < 4:
                return _MORE  # finish() treats this like any incomplete prolog
            start = bytes(buf[:4])
            # UTF-16/32 (BOM, or NULs around the first ASCII character): ASCII bytes would break it.
            if start[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in start:
                return _GIVE_UP
            self._started = True
            if start.startswith(_UTF8_BOM):
                self._pos = 3
        i = self._pos
        while True:
            m = _WS.match(buf, i, n)
            i = m.end() if m else i
            self._pos = i
            if i >= n:
                return _MORE
            if buf[i] != 0x3C:  # "<": anything else is text, i.e. content
                return self._cand if self._phase == _AFTER else i
            kind, end = self._token(buf, i, n)
            if kind == _MORE:
                return _MORE
            self._hint = 0
            if kind == _SKIP:
                i = end
                continue
            name = bytes(buf[i + 1 : end]).lower() if kind == _START else b""
            if name not in (b"html", b"head", b"meta"):
                return self._cand if self._phase == _AFTER else i
            # Only these three need their end; a quoted ">" must not end them early. An
            # incomplete tag can only complete once a new ">" arrives.
            rest = None
            if self._hint == 0 or buf.find(b">", i + self._hint, n) >= 0:
                rest = _TAG_REST.match(buf, end, n)
            if rest is None:
                self._hint = n - i
                return _MORE
            self._hint = 0
            tag_end = rest.end()
            if name == b"meta":
                if _CHARSET_META.search(buf, end, tag_end):
                    return tag_end
                if self._phase == _PROLOG:  # a bare document that starts with <meta>
                    self._phase, self._cand = _AFTER, i
                if self._base + tag_end > _PRESCAN:
                    return self._cand
                self._head_ok = False  # look on for a charset meta, but no <head> any more
            elif self._phase == _PROLOG:
                self._phase, self._cand, self._head_ok = _AFTER, tag_end, name == b"html"
            elif name == b"head" and self._head_ok:
                self._cand, self._head_ok = tag_end, False
            else:
                return self._cand
            i = tag_end

    def _token(self, buf: bytes | bytearray, i: int, n: int) -> tuple[int, int]:
        """Classify the "<" at `i`: (_SKIP, end), (_START, name end), (_CONTENT, i), (_MORE, 0)."""
        if i + 1 >= n:
            return _MORE, 0
        c = buf[i + 1]
        if c == 0x21:  # "!"
            if buf.startswith(b"<!--", i, n):
                if n > i + 4 and buf[i + 4] == 0x3E:  # "<!-->" closes at once
                    return _SKIP, i + 5
                if buf.startswith(b"->", i + 4, n):  # so does "<!--->"
                    return _SKIP, i + 6
                m = _COMMENT_END.search(buf, i + max(4, self._hint - 3), n)
                if m is None:
                    self._hint = n - i
                    return _MORE, 0
                return _SKIP, m.end()
            if n < i + 4 and b"<!--".startswith(bytes(buf[i:n])):
                return _MORE, 0
            return self._bogus(buf, i, n)  # doctype, CDATA outside SVG/MathML, "<!x"
        if c == 0x3F:  # "<?"
            return self._bogus(buf, i, n)
        if c == 0x2F:  # "</"
            if i + 2 >= n:
                return _MORE, 0
            if _is_letter(buf[i + 2]):
                return _CONTENT, i  # an end tag
            return self._bogus(buf, i, n)
        if _is_letter(c):
            m = _NAME.match(buf, i + 1, n)
            end = m.end() if m else n
            return (_MORE, 0) if end >= n else (_START, end)
        return _CONTENT, i  # "<" before anything else is text

    def _bogus(self, buf: bytes | bytearray, i: int, n: int) -> tuple[int, int]:
        j = buf.find(b">", i + max(2, self._hint), n)
        if j < 0:
            self._hint = n - i
            return _MORE, 0
        return _SKIP, j + 1


def _is_letter(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


_WIDE = re.compile(
    rb"(?i)^(?:utf-?(?:16|32)(?:[bl]e)?|ucs-?[24]|unicode(?:fffe|feff)?|csunicode|iso-10646-ucs-2)$"
)
_CT_CHARSET = re.compile(r"""(?i)(?:^|;)\s*charset\s*=\s*["']?([^"';\s]+)""")
_META_CHARSET = re.compile(rb"""(?i)<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""")


def html_charset_is_ascii_compatible(content_type: str | None, head_bytes: bytes = b"") -> bool:
    """False for UTF-16/UTF-32 (by charset param, BOM, or <meta charset> in head_bytes).

    Never inject there: the inserted ASCII bytes would corrupt the text. `head_bytes` is the
    start of the body (up to 1024 bytes are looked at).
    """
    if not head_bytes:
        return _content_type_is_ascii_compatible(content_type)
    if head_bytes.startswith(_UTF8_BOM):
        return True  # the BOM wins over every declaration in browsers
    if head_bytes[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head_bytes[:4]:
        return False
    if not _content_type_is_ascii_compatible(content_type):
        return False
    # Browsers read a UTF-16 <meta> as UTF-8 (it was readable as ASCII), but a page that says
    # UTF-16 anywhere is confused enough to leave alone.
    m2 = _META_CHARSET.search(head_bytes[:_PRESCAN])
    return not (m2 and _WIDE.match(m2.group(1)))


@lru_cache(maxsize=64)
def _content_type_is_ascii_compatible(content_type: str | None) -> bool:
    # A site sends a handful of Content-Type values: each is read once.
    if content_type:
        m = _CT_CHARSET.search(content_type)
        if m and _WIDE.match(m.group(1).encode("ascii", "replace")):
            return False
    return True
