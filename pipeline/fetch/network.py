"""The network boundary of fetching: name resolution, TCP connections, and the address policy.

When a feed's configured URL is public, a connection to a non-public address (loopback,
private, link-local, ...) is refused, whether the URL itself or a redirect leads there. The
check is made on the addresses actually connected to, by the network backend under httpx
(inside :class:`GuardedTransport`), so DNS cannot answer differently between the check and
the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpcore
import httpx

from ..errors import FetchError


class AddressRefused(FetchError):
    """A connection to a non-public address that the feed's configured URL does not allow."""


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


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's default transport, rebuilt on public APIs with our network backend underneath."""

    def __init__(self, network: Network, *, allow_private: bool, concurrency: int) -> None:
        self.backend = _GuardedBackend(network, allow_private=allow_private)
        self.max_connections = max(10, concurrency)
        self.pools: dict[bool, httpcore.AsyncConnectionPool] = {}  # by "is https"

    def _pool(self, secure: bool) -> httpcore.AsyncConnectionPool:
        # One pool per scheme: only https needs the certificate store, which is slow to load.
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
