"""Download feeds: bytes plus the response's validators, never parsed here.

Every download is bounded:

- **Time.** Each feed has ``[fetch] timeout`` in total (name resolution, connecting, every
  redirect, the whole body), enforced by cancelling the download at its deadline: a server
  that trickles one byte at a time costs exactly the timeout, not the timeout per read.
- **Size.** The body is decoded here (gzip, deflate, brotli) with the decoders' output
  bounded, so ``[fetch] max_bytes`` holds after decompression and a compression bomb is cut
  off after at most one buffer past the cap.
- **Redirects.** At most :data:`MAX_REDIRECTS`, followed by hand: a loop is named as such, a
  chain of permanent redirects (301/308, RFC 9110 15.4.2 and 15.4.9) from the start moves the
  feed, and a redirect to a non-public address (loopback, private, link-local, ...) is refused
  when the configured URL is public. The address check is made on the addresses actually
  connected to (a network backend below httpx), so DNS cannot answer differently between the
  check and the connection.

Conditional GET sends the stored ETag / Last-Modified (RFC 9110 13.1); a 304 means nothing to
parse. 429 and 503 carry their Retry-After (RFC 9110 10.2.3) in the :class:`FetchError`, and
:func:`next_attempt_delay` turns failures into a per-feed backoff. Local paths are read from
disk, with their size and mtime as the validator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

import brotli
import httpcore
import httpx

from . import __version__
from .errors import FetchError
from .models import FetchResult
from .text import clean_text

log = logging.getLogger("digest")

USER_AGENT = f"digest/{__version__} (feed-to-email digests; python-httpx/{httpx.__version__})"
ACCEPT = "application/atom+xml, application/rss+xml, application/rdf+xml, application/xml;q=0.9, */*;q=0.8"
ACCEPT_ENCODING = "gzip, deflate, br"
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
PERMANENT = (301, 308)
FIRST_BACKOFF = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=24)
MAX_RETRY_AFTER = timedelta(days=7)


class AddressRefused(FetchError):
    """A connection to a non-public address that the feed's configured URL does not allow."""


# --- the network boundary ------------------------------------------------------------------

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses, from the system resolver (getaddrinfo), in its order."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Network:
    """Name resolution and TCP connections: the process boundary.

    The defaults are the system resolver and httpcore's AnyIO backend. Tests give a resolver
    that maps made-up names to public-looking addresses and a backend that connects every
    address to 127.0.0.1, so the address policy runs for real against a loopback server.
    """

    resolve: Resolver = system_resolve
    backend: httpcore.AsyncNetworkBackend = field(default_factory=httpcore.AnyIOBackend)


def is_public_address(address: str) -> bool:
    """Whether an IP address is globally reachable (not loopback, private, link-local, ...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def host_is_private(host: str, network: Network) -> bool:
    """Whether a configured host is, or resolves to, a non-public address (or cannot be resolved)."""
    host = host.strip("[]")
    if _is_ip(host):
        return not is_public_address(host)
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        addresses = await network.resolve(host, 0)
    except (OSError, httpcore.ConnectError):
        # Unresolvable now: treat as public (strict). If it later resolves privately, the
        # connection itself is refused, which is the safe side.
        return False
    return any(not is_public_address(a) for a in addresses)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves names itself and connects only to addresses the policy allows.

    httpcore hands TLS the origin's host name (not the address), so certificates are still
    checked against the name.
    """

    def __init__(self, network: Network, *, allow_private: bool) -> None:
        self.network = network
        self.allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = [host] if _is_ip(host) else await self.network.resolve(host, port)
        if not self.allow_private:
            public = [a for a in addresses if is_public_address(a)]
            if not public:
                shown = ", ".join(addresses[:3]) or "no address"
                name = host if _is_ip(host) else f"{host} ({shown})"
                raise AddressRefused(
                    f"refused to connect to the non-public address {name}: "
                    "the feed's configured URL is public"
                )
            addresses = public
        if not addresses:
            raise httpcore.ConnectError(f"{host}: no address")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.network.backend.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for feeds")

    async def sleep(self, seconds: float) -> None:
        await self.network.backend.sleep(seconds)


def _transport_error(exc: Exception) -> httpx.TransportError:
    """httpcore's exception as the httpx exception of the same name (as httpx's own transport does)."""
    cls = getattr(httpx, type(exc).__name__, None)
    if isinstance(cls, type) and issubclass(cls, httpx.TransportError):
        return cls(str(exc))
    return httpx.TransportError(str(exc) or type(exc).__name__)


_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


class _RawStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self.stream:
                yield part
        except _HTTPCORE_ERRORS as exc:
            raise _transport_error(exc) from exc

    async def aclose(self) -> None:
        close = getattr(self.stream, "aclose", None)
        if close is not None:
            await close()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's default transport, rebuilt on public APIs with our network backend underneath."""

    def __init__(self, network: Network, *, allow_private: bool, concurrency: int) -> None:
        self.backend = _GuardedBackend(network, allow_private=allow_private)
        self.max_connections = max(10, concurrency)
        self.pools: dict[bool, httpcore.AsyncConnectionPool] = {}  # by "is https"

    def _pool(self, secure: bool) -> httpcore.AsyncConnectionPool:
        # One pool per scheme: the certificate store costs ~20 ms to load, for https only.
        pool = self.pools.get(secure)
        if pool is None:
            pool = self.pools[secure] = httpcore.AsyncConnectionPool(
                ssl_context=httpx.create_ssl_context(trust_env=False) if secure else None,
                max_connections=self.max_connections,
                network_backend=self.backend,
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool(request.url.scheme == "https").handle_async_request(core)
        except _HTTPCORE_ERRORS as exc:
            raise _transport_error(exc) from exc
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_RawStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()


# --- bounded decoding -----------------------------------------------------------------------


class _Decoder(Protocol):
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


def _decoders(content_encoding: str) -> list[_Decoder]:
    """Decoders for a Content-Encoding header, in the order to apply them."""
    decoders: list[_Decoder] = []
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


# --- fetching -------------------------------------------------------------------------------


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


def retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """A Retry-After value (delay-seconds or an HTTP-date) as a delay, at most 7 days."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = timedelta(seconds=int(value[:9]))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def next_attempt_delay(failures: int, error: FetchError | None = None) -> timedelta:
    """How long a feed rests after its ``failures``-th consecutive failure.

    The server's Retry-After when it gave one; the maximum at once for 410 Gone; otherwise
    5 minutes, doubling with each failure, at most 24 hours.
    """
    if error is not None:
        if error.retry_after is not None:
            return error.retry_after
        if error.status == 410:
            return MAX_BACKOFF
    exponent = min(max(failures, 1) - 1, 20)
    delay: timedelta = min(FIRST_BACKOFF * 2**exponent, MAX_BACKOFF)
    return delay


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
                transport=_GuardedTransport(
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
        decoders = _decoders(response.headers.get("content-encoding", ""))
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                for decoder in decoders:
                    chunk = decoder.feed(chunk, self.max_bytes - len(body))
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchError(too_large, status=response.status_code)
        except (zlib.error, brotli.error) as exc:
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
