"""Downloading feeds: conditional GET, redirects followed by hand, the body bounded, local files.

Redirects are followed by hand, at most :data:`MAX_REDIRECTS`: a loop is named as such, and a
chain of permanent redirects (301/308, RFC 9110 15.4.2 and 15.4.9) from the start moves the
feed. Conditional GET sends the stored ETag / Last-Modified (RFC 9110 13.1); a 304 means
nothing to parse. 429 and 503 carry their Retry-After (RFC 9110 10.2.3) in the
:class:`~pipeline.errors.FetchError`. Each feed has ``[fetch] timeout`` in total (name
resolution, connecting, every redirect, the whole body), enforced by cancelling the download at
its deadline. Local paths are read from disk, with their size and mtime as the validator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx

from .. import __version__
from ..errors import FetchError
from ..models import FetchResult
from ..text import clean_text
from .backoff import retry_after
from .decode import DECODE_ERRORS, content_decoders
from .network import GuardedTransport, Network, host_is_private

log = logging.getLogger("digest")

USER_AGENT = f"digest/{__version__} (feed-to-email digests; python-httpx/{httpx.__version__})"
ACCEPT = "application/atom+xml, application/rss+xml, application/rdf+xml, application/xml;q=0.9, */*;q=0.8"
ACCEPT_ENCODING = "gzip, deflate, br"
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
PERMANENT = (301, 308)


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One feed to download, with what the last successful fetch left behind.

    ``url`` is where to fetch (the configured URL, or where a permanent redirect moved it);
    ``configured_url`` decides whether non-public addresses are allowed (default: ``url``).
    """

    feed: str
    url: str
    etag: str | None = None
    last_modified: str | None = None
    configured_url: str | None = None


def _status_text(code: int) -> str:
    # The standard phrase, not the server's: a reason phrase is untrusted text shown to people.
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


class _Fetcher:
    """Two clients: one that may reach non-public addresses (for feeds configured on one), one
    that may not. Keeping them apart also keeps their pooled connections apart."""

    def __init__(self, network: Network, *, timeout: float, max_bytes: int, concurrency: int) -> None:
        self.network = network
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self.clients: dict[bool, httpx.AsyncClient] = {}

    def client(self, allow_private: bool) -> httpx.AsyncClient:
        if allow_private not in self.clients:
            self.clients[allow_private] = httpx.AsyncClient(
                transport=GuardedTransport(
                    self.network, allow_private=allow_private, concurrency=self.concurrency
                ),
                headers={"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING},
                follow_redirects=False,
                timeout=self.timeout,
                trust_env=False,
            )
        return self.clients[allow_private]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def fetch(self, request: FetchRequest) -> FetchResult:
        """Download one feed, or raise FetchError (the caller enforces the total deadline)."""
        started = time.monotonic()
        if not request.url.startswith(("http://", "https://")):
            return await asyncio.to_thread(_read_file, request, self.max_bytes, started)
        configured = httpx.URL(request.configured_url or request.url)
        client = self.client(await host_is_private(configured.host, self.network))
        headers = {}
        if request.etag:
            headers["If-None-Match"] = request.etag
        if request.last_modified:
            headers["If-Modified-Since"] = request.last_modified
        url = httpx.URL(request.url)
        seen = {str(url.copy_with(fragment=None))}
        moved: str | None = None
        permanent_so_far = True
        try:
            for hop in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code not in REDIRECTS or "location" not in response.headers:
                        return await self._result(request, response, moved, started)
                    if hop == MAX_REDIRECTS:
                        raise FetchError(f"more than {MAX_REDIRECTS} redirects", status=response.status_code)
                    target = url.join(response.headers["location"])
                    if target.scheme not in ("http", "https"):
                        raise FetchError(f"redirect to an unsupported URL {clean_text(str(target))[:200]}")
                    key = str(target.copy_with(fragment=None))
                    if key in seen:
                        raise FetchError(
                            f"redirect loop at {clean_text(key)[:200]}", status=response.status_code
                        )
                    seen.add(key)
                    permanent_so_far = permanent_so_far and response.status_code in PERMANENT
                    if permanent_so_far:
                        moved = str(target)
                    url = target
        except httpx.TimeoutException:
            raise FetchError(f"timed out after {self.timeout:g}s") from None
        except httpx.ConnectError as exc:
            raise FetchError(f"cannot connect: {exc}") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _result(
        self, request: FetchRequest, response: httpx.Response, moved: str | None, started: float
    ) -> FetchResult:
        status = response.status_code
        if status == 304:
            return FetchResult(
                feed=request.feed,
                url=str(response.url),
                status=status,
                content=None,
                headers=dict(response.headers),
                etag=response.headers.get("etag") or request.etag,
                last_modified=response.headers.get("last-modified") or request.last_modified,
                permanent_url=moved,
                elapsed=time.monotonic() - started,
            )
        if status in (429, 503):
            delay = retry_after(response.headers.get("retry-after"))
            raise FetchError(_status_text(status), status=status, retry_after=delay)
        if not 200 <= status < 300:
            raise FetchError(_status_text(status), status=status)
        body = await self._body(response)
        return FetchResult(
            feed=request.feed,
            url=str(response.url),
            status=status,
            content=body,
            headers={k: v for k, v in response.headers.items() if k.lower() != "content-encoding"},
            # A 200 without validators means the old ones no longer apply.
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            permanent_url=moved,
            elapsed=time.monotonic() - started,
        )

    async def _body(self, response: httpx.Response) -> bytes:
        too_large = f"feed is larger than the {self.max_bytes:,}-byte limit"
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(too_large, status=response.status_code)
        decoders = content_decoders(response.headers.get("content-encoding", ""))
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                for decoder in decoders:
                    chunk = decoder.feed(chunk, self.max_bytes - len(body))
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchError(too_large, status=response.status_code)
        except DECODE_ERRORS as exc:
            coding = clean_text(response.headers.get("content-encoding", ""))[:40]
            raise FetchError(f"cannot decode the {coding} body: {exc}") from exc
        return bytes(body)


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


def fetch_feeds(
    requests: Iterable[FetchRequest],
    *,
    timeout: float,
    max_bytes: int,
    concurrency: int,
    network: Network | None = None,
) -> list[tuple[FetchRequest, FetchResult | FetchError]]:
    """Fetch feeds concurrently (at most ``concurrency`` at once), each within ``timeout``.

    Returns each request with its result or its error, in the order given. A FetchError
    carries ``elapsed`` (seconds), and ``status`` / ``retry_after`` when the server said so.
    """
    requests = list(requests)
    if not requests:
        return []
    return asyncio.run(_fetch_all(requests, timeout, max_bytes, concurrency, network or Network()))


async def _fetch_all(
    requests: Sequence[FetchRequest], timeout: float, max_bytes: int, concurrency: int, network: Network
) -> list[tuple[FetchRequest, FetchResult | FetchError]]:
    fetcher = _Fetcher(network, timeout=timeout, max_bytes=max_bytes, concurrency=concurrency)
    slots = asyncio.Semaphore(concurrency)

    async def one(request: FetchRequest) -> FetchResult | FetchError:
        async with slots:
            started = time.monotonic()
            outcome: FetchResult | FetchError
            try:
                async with asyncio.timeout(timeout):
                    outcome = await fetcher.fetch(request)
            except TimeoutError:
                outcome = FetchError(f"timed out after {timeout:g}s")
            except FetchError as exc:
                outcome = exc
            except Exception as exc:  # a library's surprise must not cost the other feeds theirs
                log.exception("feed=%s unexpected error", request.feed)
                outcome = FetchError(f"unexpected {type(exc).__name__}: {exc}")
            if isinstance(outcome, FetchError):
                outcome.elapsed = time.monotonic() - started
            return outcome

    try:
        outcomes = await asyncio.gather(*(one(r) for r in requests))
    finally:
        await fetcher.aclose()
    return list(zip(requests, outcomes, strict=True))
