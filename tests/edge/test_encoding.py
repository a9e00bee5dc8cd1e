"""RewriteStream: decode, inject, re-encode per Content-Encoding, streaming (checklist 13)."""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest

from gateway.edge import encoding
from gateway.edge.encoding import RewriteError, RewriteStream, open_rewrite
from gateway.edge.inject import HeadInjector

TAG = b'<script src="/_capi/px.js" data-p="1"></script>'
HEAD = b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Shop</title>'
PAGE = HEAD + b"".join(
    b'<div class="item" id="i%d"><a href="/p/%d">Product %d</a> <b>%d EUR</b></div>\n'
    % (i, i * 7, i, i % 97)
    for i in range(600)
)
EXPECTED = PAGE.replace(b'charset="utf-8">', b'charset="utf-8">' + TAG, 1)


def gzip_(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def zlib_(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def br_(data: bytes) -> bytes:
    return bytes(brotli.compress(data, quality=5))


def ungzip(data: bytes) -> bytes:
    return zlib.decompress(data, 31)


def unraw(data: bytes) -> bytes:
    return zlib.decompress(data, -15)


def unbr(data: bytes) -> bytes:
    return bytes(brotli.decompress(data))


CODECS: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
    ("gzip", gzip_, ungzip),
    ("x-gzip", gzip_, ungzip),
    ("deflate", zlib_, zlib.decompress),  # zlib-wrapped stays zlib-wrapped
    ("deflate", raw_, unraw),  # raw deflate stays raw
    ("br", br_, unbr),
    ("GZip ", gzip_, ungzip),
]


def stream(coding: str | None) -> RewriteStream:
    rs = open_rewrite(coding, HeadInjector(TAG))
    assert rs is not None
    return rs


def random_chunks(data: bytes, rng: random.Random) -> Iterator[bytes]:
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 7, 100, 1000, 3000, 20000))
        yield data[i : i + n]
        i += n


@pytest.mark.parametrize(("coding", "enc", "dec"), CODECS)
def test_round_trip_in_random_chunks(
    coding: str, enc: Callable[[bytes], bytes], dec: Callable[[bytes], bytes]
) -> None:
    body = enc(PAGE)
    for seed in range(8):
        rs = stream(coding)
        out = b"".join(rs.feed(c) for c in random_chunks(body, random.Random(seed)))
        out += rs.finish()
        assert rs.injected
        assert dec(out) == EXPECTED, seed


@pytest.mark.parametrize("coding", [None, "", "identity", " Identity"])
def test_identity(coding: str | None) -> None:
    rs = stream(coding)
    out = b"".join(rs.feed(PAGE[i : i + 333]) for i in range(0, len(PAGE), 333))
    assert out + rs.finish() == EXPECTED and rs.injected


@pytest.mark.parametrize("coding", ["zstd", "compress", "gzip, br", "br,gzip", "gzip,gzip", "x"])
def test_unknown_and_stacked_pass_through(coding: str) -> None:
    assert open_rewrite(coding, HeadInjector(TAG)) is None


def origin_stream(
    compress: Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]],
) -> list[bytes]:
    """PAGE as an origin that flushes every 4 KiB would send it."""
    feed, flush = compress()
    return [feed(PAGE[i : i + 4096]) + flush() for i in range(0, len(PAGE), 4096)]


def _zlib_origin(wbits: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress, lambda: c.flush(zlib.Z_SYNC_FLUSH)


def _br_origin() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = brotli.Compressor(quality=5)
    return c.process, c.flush


@pytest.mark.parametrize(
    ("coding", "origin", "decoder"),
    [
        ("gzip", lambda: _zlib_origin(31), lambda: zlib.decompressobj(31).decompress),
        ("deflate", lambda: _zlib_origin(15), lambda: zlib.decompressobj(15).decompress),
        ("deflate", lambda: _zlib_origin(-15), lambda: zlib.decompressobj(-15).decompress),
        ("br", _br_origin, lambda: brotli.Decompressor().process),
    ],
)
def test_output_streams_before_finish(
    coding: str,
    origin: Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]],
    decoder: Callable[[], Callable[[bytes], bytes]],
) -> None:
    chunks = origin_stream(origin)
    rs = stream(coding)
    decode = decoder()
    first = rs.feed(chunks[0])
    # The first 4 KiB come out at once, tag included, decodable without the rest.
    assert decode(first) == EXPECTED[: 4096 + len(TAG)]
    seen = len(first)
    for c in chunks[1:-1]:
        out = rs.feed(c)
        assert out, "every chunk yields flushed output"
        decode(out)
        seen += len(out)
    assert seen > 0 and rs.injected


def _zeros_gzip(prefix: bytes, mib: int) -> bytes:
    """`prefix` + `mib` MiB of zeros as gzip, built from one repeated block (fast)."""
    zero = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = c.compress(prefix + zero) + c.flush(zlib.Z_SYNC_FLUSH)
    # With only zeros in the 32 KiB window, this block decodes the same wherever it is put.
    block = c.compress(zero) + c.flush(zlib.Z_SYNC_FLUSH)
    end = c.flush()[:-8]
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    size = (len(prefix) + (mib << 20)) & 0xFFFFFFFF
    return first + block * (mib - 1) + end + struct.pack("<II", crc, size)


def _zeros_br(prefix: bytes, mib: int) -> bytes:
    c = brotli.Compressor(quality=1)
    zero = bytes(1 << 20)
    return bytes(c.process(prefix) + b"".join(c.process(zero) for _ in range(mib)) + c.finish())


BOMB_MIB = 256  # 8x the memory bound; 1 GiB proves no more and costs 4x the time


class _Counter:
    """Decodes the gateway's output in bounded steps: counts bytes, keeps the first 4 KiB."""

    def __init__(self, coding: str) -> None:
        self.br = coding == "br"
        self.d: Any = brotli.Decompressor() if self.br else zlib.decompressobj(31)
        self.size = 0
        self.head = b""

    def take(self, data: bytes) -> None:
        while True:
            if self.br:
                out = self.d.process(data, output_buffer_limit=1 << 20)
            else:
                out = self.d.decompress(data, 1 << 20)
                data = self.d.unconsumed_tail
            self.size += len(out)
            if len(self.head) < 4096:
                self.head += out[:4096]
            if not out:
                return
            data = data if not self.br else b""


@pytest.mark.parametrize(
    ("coding", "make", "prefix"),
    [("gzip", _zeros_gzip, HEAD), ("gzip", _zeros_gzip, b""), ("br", _zeros_br, HEAD)],
)
def test_decompression_bomb_bounded_memory(
    coding: str, make: Callable[[bytes, int], bytes], prefix: bytes
) -> None:
    bomb = make(prefix, BOMB_MIB)
    assert len(bomb) < 2 << 20
    counter = _Counter(coding)
    rs = stream(coding)
    peak = 0
    tracemalloc.start()
    try:
        for i in range(0, len(bomb), 16384):
            tracemalloc.reset_peak()
            out = rs.feed(bomb[i : i + 16384])
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            counter.take(out)
        tracemalloc.reset_peak()
        out = rs.finish()
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        counter.take(out)
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    assert counter.size == len(prefix) + (BOMB_MIB << 20) + (len(TAG) if prefix else 0)
    if prefix:
        assert rs.injected and counter.head.startswith(EXPECTED[: len(HEAD) + len(TAG)])
    else:
        assert not rs.injected  # NULs at the start: not HTML that can be touched


def test_corrupt_and_truncated() -> None:
    with pytest.raises(RewriteError):
        stream("gzip").feed(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    with pytest.raises(RewriteError):
        stream("deflate").feed(b"\x78\x9c" + b"\xff" * 64)
    with pytest.raises(RewriteError):
        stream("br").feed(b"\xff" * 64 + gzip_(PAGE))
    body = gzip_(PAGE)
    rs = stream("gzip")
    rs.feed(body[: len(body) // 2])
    with pytest.raises(RewriteError, match="truncated"):
        rs.finish()
    rs = stream("br")
    rs.feed(br_(PAGE)[:-3])
    with pytest.raises(RewriteError):
        rs.finish()


def test_gzip_members_trailing_bytes_and_empty_body() -> None:
    first = gzip_(PAGE[:5000])
    body = first + gzip_(PAGE[5000:]) + b"\x00\x00garbage"
    # Split anywhere around the end of the first member, and right before the junk.
    for cut in range(len(first) - 9, len(first) + 12):
        for cut2 in (cut, cut + 1, len(body) - 9, len(body) - 8):
            rs = stream("gzip")
            out = rs.feed(body[:cut]) + rs.feed(body[cut:cut2]) + rs.feed(body[cut2:])
            assert ungzip(out + rs.finish()) == EXPECTED, (cut, cut2)
    rs = stream("gzip")
    assert rs.feed(b"") == b"" and rs.finish() == b""  # an empty body stays empty


def test_brotli_without_output_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "_BROTLI_CAPPED", False)
    rs = stream("br")
    out = b"".join(rs.feed(c) for c in random_chunks(br_(PAGE), random.Random(1)))
    assert unbr(out + rs.finish()) == EXPECTED
