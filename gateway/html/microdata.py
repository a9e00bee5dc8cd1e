"""Microdata items from HTML bytes: tags in, nested item dicts out (for gateway.html.products).

Microdata needs the element tree — which element an `itemprop` sits in, where an
`itemscope` ends, an element's text — and the rules' scanner (gateway.html.scan) skips end
tags and text by design. `MicrodataWalker` walks tags with the same tokenizer regexes
(gateway.html.tokens: `START`, `ATTR`, raw-text and comment ends) and keeps a stack of open
elements only inside an item; the caller switches it on at the first `itemscope` tag and off
when it is `idle` (no element open), so a page pays for its items, not for its length.

Followed from the HTML tokenizer: comments, bogus comments (`<!x>`, `<?x>`), raw text
(`script`, `style`, ... skipped to their end tag; a script's `<!--` escapes are not modelled),
first of duplicated attributes, attribute entities by the attribute rules. Tree building is
approximated: an end tag closes the innermost open element of its name and everything inside
it; an end tag with no open element of its name is ignored; void elements never open; the
common implied end tags are made (`<p>` before a block, `<li>`, `<dt>`/`<dd>`, table rows
and cells, `<option>`).

Values follow the microdata spec: `content`, else the URL attribute of a/area/link
(`href`), img/audio/embed/iframe/source/track/video (`src`), object (`data`),
`value` of data/meter, `datetime` of time, else the element's text (whitespace collapsed).
Bounded: `MAX_ITEMS` top-level items, `MAX_VALUES` values per property and
`MAX_VALUES * MAX_ITEMS` in all, `MAX_TEXT` characters per text value, `MAX_DEPTH` open
elements, `MAX_TAG` bytes for one tag; past a bound `over` is set.
"""

from __future__ import annotations

import html
import re
from typing import Any

from gateway.html.tokens import ATTR, COMMENT_END, RAW_END, START, attr_unescape

__all__ = ["MicrodataWalker"]

MAX_ITEMS = 50
MAX_VALUES = 200
MAX_TEXT = 10_000
MAX_DEPTH = 64
MAX_TAG = 65_536

# Where a microdata property's value lives, by element (the HTML standard's list).
_URL_ATTR = {
    "a": "href", "area": "href", "link": "href", "audio": "src", "embed": "src",
    "iframe": "src", "img": "src", "source": "src", "track": "src", "video": "src",
    "object": "data",
}  # fmt: skip
_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())
_VOID_B = frozenset(v.encode() for v in _VOID)
_RAW = frozenset({b"script", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript"})
_RCDATA = frozenset({b"title", b"textarea"})  # raw too, but their text is text
# Start tags that close an open element first (the tree builder's implied end tags, for the
# elements where markup leaves them out in practice): name -> (closes, stops the search).
_BUTTON_SCOPE = frozenset(b"applet caption html table td th marquee object template button".split())
_P_CLOSERS = frozenset(
    b"address article aside blockquote center details dialog dir div dl fieldset figcaption "
    b"figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr main menu nav ol p pre section "
    b"summary table ul li dd dt".split()
)
_IMPLIED: dict[bytes, tuple[frozenset[bytes], frozenset[bytes]]] = {
    b"li": (frozenset({b"li"}), frozenset({b"ul", b"ol"}) | _BUTTON_SCOPE),
    b"dt": (frozenset({b"dt", b"dd"}), frozenset({b"dl"}) | _BUTTON_SCOPE),
    b"dd": (frozenset({b"dt", b"dd"}), frozenset({b"dl"}) | _BUTTON_SCOPE),
    b"tr": (frozenset({b"tr"}), frozenset({b"table", b"thead", b"tbody", b"tfoot"})),
    b"td": (frozenset({b"td", b"th"}), frozenset({b"tr", b"table"})),
    b"th": (frozenset({b"td", b"th"}), frozenset({b"tr", b"table"})),
    b"option": (frozenset({b"option"}), frozenset({b"select", b"datalist"})),
}
_IMPLIES = _P_CLOSERS | frozenset(_IMPLIED)
_END_NAME = re.compile(rb"[A-Za-z][^\t\n\f\r />]*+")
_HTML, _COMMENT, _RAWTEXT = range(3)


class _Node:
    __slots__ = ("item", "props", "tag", "text")

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.item: dict[str, Any] | None = None  # the item this element opens
        self.props: tuple[str, ...] = ()  # properties its text content is the value of
        self.text: list[bytes] | None = None


class MicrodataWalker:
    """Feed bytes from an itemscope tag on (`step` token by token); `items` are the results."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.items: list[dict[str, Any]] = []
        self.stack: list[_Node] = []  # open elements inside some item
        self.scopes: list[dict[str, Any]] = []  # open items, innermost last
        self.texts = 0  # open elements collecting text
        self.values = 0
        self.over = False
        self.started = False  # an itemscope tag was read since switched on
        self._mode = _HTML
        self._raw_end: re.Pattern[bytes] | None = None
        self._rcdata = False

    @property
    def idle(self) -> bool:
        """No element open and not inside a comment or raw text: it may be switched off."""
        return not self.stack and self._mode == _HTML

    def reset(self) -> None:
        """Switched on again: the state between tokens starts afresh (items are kept)."""
        self._mode, self.started = _HTML, False

    def step(self, data: bytes, p: int, final: bool = False) -> int:
        """Read the token at data[p]; where the next starts, or -1 if more bytes are needed."""
        n = len(data)
        if self._mode == _COMMENT:
            m = COMMENT_END.search(data, p)
            if m:
                self._mode = _HTML
                return m.end()
            if final:
                return n
            return n - 3 if n - 3 > p else -1
        if self._mode == _RAWTEXT:
            assert self._raw_end is not None
            m = self._raw_end.search(data, p)
            end = m.start() if m else (n if final else max(p, n - 12))
            if self._rcdata and self.texts:
                self._text(data[p:end])
            if m:
                self._mode = _HTML
                return end  # perhaps p itself: the end tag is read next, in HTML mode
            return end if end > p else -1
        j = data.find(b"<", p)
        if j == p:
            return self._tag(data, p, final)
        if self.texts:
            self._text(data[p : n if j < 0 else j])
        if j < 0:
            return n
        q = self._tag(data, j, final)  # text and the tag after it in one call: half the calls
        return j if q < 0 else q

    def _tag(self, data: bytes, p: int, final: bool) -> int:
        """The token at data[p] == "<"; where the next starts, or -1 if more bytes are needed."""
        n = len(data)
        if p + 1 >= n:
            return n if final else -1
        c = data[p + 1]
        if c == 0x21:  # "!"
            if data.startswith(b"<!--", p):
                self._mode = _COMMENT
                return p + 4
            if n - p < 4 and b"<!--".startswith(data[p:n]) and not final:
                return -1
            return self._bogus(data, p, final)
        if c == 0x3F:  # "?"
            return self._bogus(data, p, final)
        if c == 0x2F:  # "/"
            m = _END_NAME.match(data, p + 2)
            if m is None:
                return self._bogus(data, p, final) if p + 2 < n or final else -1
            k = data.find(b">", m.end())
            if k < 0:
                return self._too_long(data, p, final)
            self._end(m.group().lower())
            return k + 1
        if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
            m = START.match(data, p)
            if m is None:
                return self._too_long(data, p, final)
            self._start(data, m)
            return m.end()
        if self.texts:
            self._text(b"<")
        return p + 1

    def finish(self) -> None:
        """End of the input: close what is still open."""
        while self.stack:
            self._close(self.stack.pop())

    # tokens ----------------------------------------------------------------------------

    def _bogus(self, data: bytes, p: int, final: bool) -> int:
        k = data.find(b">", p)
        return k + 1 if k >= 0 else self._too_long(data, p, final)

    def _too_long(self, data: bytes, p: int, final: bool) -> int:
        # An unfinished tag: wait for more, unless it is past any sane size (then "<" is text).
        return p + 1 if final or len(data) - p > MAX_TAG else -1

    def _start(self, data: bytes, m: re.Match[bytes]) -> None:
        name = m.group(1).lower()
        if self.stack and name in _IMPLIES:
            self._implied(name)
        body = data[m.start(2) : m.end()].lower()
        scoped = b"itemscope" in body
        if not self.scopes and not scoped:
            pass  # outside every item only a new item matters
        elif scoped or b"itemprop" in body:
            self._item_tag(name, self._attrs(data, m.start(2), m.end()))
        elif name not in _VOID_B:
            self._push(_Node(name))
        if name in _RAW or name in _RCDATA:
            self._mode = _RAWTEXT
            self._raw_end = RAW_END[name]
            self._rcdata = name in _RCDATA

    def _implied(self, name: bytes) -> None:
        """Close what this start tag closes implicitly (an open <li> at the next <li>...)."""
        if name in _P_CLOSERS:
            self._close_up_to(frozenset({b"p"}), _BUTTON_SCOPE)
        rule = _IMPLIED.get(name)
        if rule is not None:
            self._close_up_to(*rule)

    def _close_up_to(self, names: frozenset[bytes], stop: frozenset[bytes]) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            tag = self.stack[i].tag
            if tag in names:
                while len(self.stack) > i:
                    self._close(self.stack.pop())
                return
            if tag in stop:
                return

    def _item_tag(self, name: bytes, a: dict[str, str]) -> None:
        tag = name.decode("ascii", "replace")
        scoped = "itemscope" in a
        self.started = self.started or scoped
        if not scoped and not self.scopes:
            return  # "itemscope" was only a word in a value
        props = tuple(a.get("itemprop", "").split()) if self.scopes else ()
        node = _Node(name)
        if scoped:
            item: dict[str, Any] = {"@type": a.get("itemtype", "").strip()}
            if a.get("itemid"):
                item["@id"] = a["itemid"].strip()
            if props:
                for prop in props:
                    self._add(self.scopes[-1], prop, item)
            elif len(self.items) < MAX_ITEMS:
                self.items.append(item)
            else:
                self.over = True
            node.item = item
        elif props:
            value = _attr_value(tag, a)
            if value is not None:
                for prop in props:
                    self._add(self.scopes[-1], prop, value)
            elif tag not in _VOID:
                node.props, node.text = props, []
                self.texts += 1
        if tag not in _VOID:
            self._push(node)

    def _push(self, node: _Node) -> None:
        if len(self.stack) >= MAX_DEPTH:
            self.over = True
            if node.text is not None:
                self.texts -= 1
            return
        self.stack.append(node)
        if node.item is not None:
            self.scopes.append(node.item)

    def _end(self, name: bytes) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == name:
                while len(self.stack) > i:
                    self._close(self.stack.pop())
                return

    def _close(self, node: _Node) -> None:
        if node.item is not None and self.scopes and self.scopes[-1] is node.item:
            self.scopes.pop()
        if node.text is not None:
            self.texts -= 1
            raw = b"".join(node.text).decode(self.charset, "replace")
            value = " ".join(html.unescape(raw).split())[:MAX_TEXT]
            if self.scopes:
                for prop in node.props:
                    self._add(self.scopes[-1], prop, value)

    def _text(self, piece: bytes) -> None:
        for node in self.stack:
            if node.text is not None and sum(map(len, node.text)) < MAX_TEXT * 4:
                node.text.append(piece)

    def _attrs(self, data: bytes, start: int, end: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in ATTR.finditer(data, start, end):
            key = m.group(1).decode(self.charset, "replace").lower()
            if key not in out:  # browsers keep the first of duplicated attributes
                raw = m.group(2)
                if raw is None:
                    raw = m.group(3)
                    if raw is None:
                        raw = m.group(4) or b""
                text = raw.decode(self.charset, "replace")
                out[key] = attr_unescape(text.replace("\r\n", "\n")) if text else ""
        return out

    def _add(self, item: dict[str, Any], prop: str, value: Any) -> None:
        if self.values >= MAX_VALUES * MAX_ITEMS:
            self.over = True
            return
        self.values += 1
        old = item.get(prop)
        if old is None:
            item[prop] = value
        elif isinstance(old, list):
            if len(old) < MAX_VALUES:
                old.append(value)
            else:
                self.over = True
        else:
            item[prop] = [old, value]


def _attr_value(tag: str, a: dict[str, str]) -> str | None:
    if "content" in a:
        return a["content"].strip()
    key = _URL_ATTR.get(tag)
    if key is not None:
        return a.get(key, "").strip()
    if tag in ("data", "meter") and "value" in a:
        return a["value"].strip()
    if tag == "time" and "datetime" in a:
        return a["datetime"].strip()
    return None
