"""Download feeds: bytes plus the response's validators, never parsed here.

Every download is bounded (each bound is detailed beside the code that enforces it):

- **Time.** Each feed has ``[fetch] timeout`` in total (name resolution, connecting, every
  redirect, the whole body), enforced by cancelling the download at its deadline: a server
  that trickles one byte at a time costs exactly the timeout, not the timeout per read
  (``client``).
- **Size.** The body is decoded here (gzip, deflate, brotli) with the decoders' output
  bounded, so ``[fetch] max_bytes`` holds after decompression (``decode``).
- **Redirects.** At most :data:`MAX_REDIRECTS`, followed by hand; a chain of permanent
  redirects (301/308, RFC 9110 15.4.2 and 15.4.9) from the start moves the feed (``client``).
- **Addresses.** A connection to a non-public address (loopback, private, link-local, ...) is
  refused when the configured URL is public, checked on the addresses actually connected to
  (``network``).

Conditional GET sends the stored ETag / Last-Modified (RFC 9110 13.1); a 304 means nothing to
parse. 429 and 503 carry their Retry-After (RFC 9110 10.2.3) in the
:class:`~pipeline.errors.FetchError`, and :func:`next_attempt_delay` turns failures into a
per-feed backoff (``backoff``). Local paths are read from disk, with their size and mtime as
the validator.
"""

from __future__ import annotations

from .backoff import FIRST_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER, next_attempt_delay, retry_after
from .client import (
    ACCEPT,
    ACCEPT_ENCODING,
    MAX_REDIRECTS,
    PERMANENT,
    REDIRECTS,
    USER_AGENT,
    FetchRequest,
    fetch_feeds,
)
from .network import AddressRefused, Network, Resolver, host_is_private, is_public_address, system_resolve

__all__ = [
    "ACCEPT",
    "ACCEPT_ENCODING",
    "FIRST_BACKOFF",
    "MAX_BACKOFF",
    "MAX_REDIRECTS",
    "MAX_RETRY_AFTER",
    "PERMANENT",
    "REDIRECTS",
    "USER_AGENT",
    "AddressRefused",
    "FetchRequest",
    "Network",
    "Resolver",
    "fetch_feeds",
    "host_is_private",
    "is_public_address",
    "next_attempt_delay",
    "retry_after",
    "system_resolve",
]
