"""Download feeds: bytes plus the response's validators, never parsed here.

Each download is bounded: a total time budget (``[fetch] timeout``) checked while the body
streams in, so a server that trickles bytes costs at most that, and a size cap after
decompression (``[fetch] max_bytes``). Conditional GET uses the stored ETag / Last-Modified
(RFC 9110 section 13.1), so an unchanged feed costs one 304. Local paths are read from disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import __version__
from .errors import FetchError
from .models import FetchResult

USER_AGENT = f"digest/{__version__} (feed-to-email digests; python-httpx)"
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One feed to download, with what the last successful fetch left behind."""

    feed: str
    url: str
    etag: str | None = None
    last_modified: str | None = None


def fetch_feed(request: FetchRequest, *, timeout: float, max_bytes: int, client: httpx.Client) -> FetchResult:
    """Download one feed, or raise FetchError saying what went wrong."""
    started = time.monotonic()
    if not request.url.startswith(("http://", "https://")):
        return _read_file(request, max_bytes, started)
    headers = {}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified
    deadline = started + timeout
    try:
        with client.stream("GET", request.url, headers=headers, timeout=timeout) as response:
            if response.status_code == 304:
                return _result(request, response, None, started)
            if response.status_code >= 400:
                raise FetchError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"feed is larger than the {max_bytes:,}-byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(f"timed out after {timeout:g}s")
            return _result(request, response, bytes(body), started)
    except httpx.TooManyRedirects:
        raise FetchError(f"more than {MAX_REDIRECTS} redirects (or a redirect loop)") from None
    except httpx.TimeoutException:
        raise FetchError(f"timed out after {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


def _result(
    request: FetchRequest, response: httpx.Response, body: bytes | None, started: float
) -> FetchResult:
    # A permanent redirect (RFC 9110 15.4.2 / 15.4.9) at the start of the chain moves the feed.
    permanent = None
    if response.history and response.history[0].status_code in (301, 308):
        permanent = str(response.url)
    return FetchResult(
        feed=request.feed,
        url=str(response.url),
        status=response.status_code,
        content=body,
        headers=dict(response.headers),
        etag=response.headers.get("etag") or request.etag,
        last_modified=response.headers.get("last-modified") or request.last_modified,
        permanent_url=permanent,
        elapsed=time.monotonic() - started,
    )


def _read_file(request: FetchRequest, max_bytes: int, started: float) -> FetchResult:
    path = Path(request.url)
    try:
        stat = path.stat()
        # The file's size and mtime play the part of Last-Modified: unchanged, nothing to parse.
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
        content = None
        if version != request.last_modified:
            if stat.st_size > max_bytes:
                raise FetchError(f"feed file {path} is larger than the {max_bytes:,}-byte limit")
            content = path.read_bytes()
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    return FetchResult(
        feed=request.feed,
        url=str(path),
        status=None,
        content=content,
        last_modified=version,
        elapsed=time.monotonic() - started,
    )


def http_client() -> httpx.Client:
    """The shared client: our User-Agent, compressed bodies, redirects followed (bounded)."""
    return httpx.Client(
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/atom+xml, application/rss+xml, application/xml;q=0.9, */*;q=0.8",
        },
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
    )


def fetch_feeds(
    requests: Iterable[FetchRequest], *, timeout: float, max_bytes: int, concurrency: int
) -> Iterator[tuple[FetchRequest, FetchResult | FetchError]]:
    """Fetch many feeds concurrently; yield each result (or its error) as it completes."""
    requests = list(requests)
    if not requests:
        return
    with http_client() as client, ThreadPoolExecutor(max_workers=min(concurrency, len(requests))) as pool:

        def one(request: FetchRequest) -> FetchResult | FetchError:
            try:
                return fetch_feed(request, timeout=timeout, max_bytes=max_bytes, client=client)
            except FetchError as exc:
                return exc

        yield from zip(requests, pool.map(one, requests), strict=True)
