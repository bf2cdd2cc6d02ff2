"""Bounded decoding of response bodies: gzip, deflate and brotli, with their output capped.

The body is decoded here rather than by httpx, with each decoder told how much room is left
under ``[fetch] max_bytes``: so the cap holds after decompression, and a compression bomb is
cut off after at most one buffer past the cap.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli

from ..errors import FetchError
from ..text import clean_text

# What a decoder raises on a corrupt body.
DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error, brotli.error)


class Decoder(Protocol):
    """One content coding, undone a chunk at a time."""

    def feed(self, data: bytes, budget: int) -> bytes:
        """Decode ``data``; return at most about ``budget + 1`` bytes (more than ``budget``
        means the body is over the cap, and the caller stops)."""
        ...


class _Identity:
    def feed(self, data: bytes, budget: int) -> bytes:
        return data


class _Zlib:
    def __init__(self, wbits: int, *, raw_fallback: bool = False) -> None:
        self.decompressor = zlib.decompressobj(wbits)
        self.raw_fallback = raw_fallback  # "deflate" is often sent without its zlib header
        self.started = False

    def feed(self, data: bytes, budget: int) -> bytes:
        try:
            out: bytes = self.decompressor.decompress(data, budget + 1)
        except zlib.error:
            if self.started or not self.raw_fallback:
                raise
            self.decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self.decompressor.decompress(data, budget + 1)
        self.started = True
        # decompress() stops early only when max_length was reached: then we are over budget.
        return out


class _Brotli:
    def __init__(self) -> None:
        self.decompressor = brotli.Decompressor()

    def feed(self, data: bytes, budget: int) -> bytes:
        # output_buffer_limit (brotli >= 1.2) bounds what one call may produce.
        out: bytes = self.decompressor.process(data, output_buffer_limit=budget + 1)
        while len(out) <= budget and not self.decompressor.can_accept_more_data():
            more: bytes = self.decompressor.process(b"", output_buffer_limit=budget + 1 - len(out))
            if not more:
                break
            out += more
        return out


def content_decoders(content_encoding: str) -> list[Decoder]:
    """Decoders for a Content-Encoding header, in the order to apply them."""
    decoders: list[Decoder] = []
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",") if c.strip()]):
        if coding in ("gzip", "x-gzip"):
            decoders.append(_Zlib(16 + zlib.MAX_WBITS))
        elif coding == "deflate":
            decoders.append(_Zlib(zlib.MAX_WBITS, raw_fallback=True))
        elif coding == "br":
            decoders.append(_Brotli())
        elif coding != "identity":
            raise FetchError(f"unsupported Content-Encoding {clean_text(coding)[:40]!r}")
    return decoders or [_Identity()]
