"""The fetcher against a real HTTP server on 127.0.0.1 (see FeedHandler in conftest.py).

Addresses: feeds configured on 127.0.0.1 are "private configured URLs", so they may be
redirected anywhere. The refusal of a redirect from a public address to a private one is
tested with made-up public names (``fake_network``): DNS and TCP are faked at the process
boundary (every connection goes to 127.0.0.1), and digest's address policy runs for real.
"""

from __future__ import annotations

import gzip
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from conftest import DATA, FeedHandler, FeedServer, LoopbackBackend, fake_network

from pipeline import __version__
from pipeline.errors import FetchError
from pipeline.fetch import (
    MAX_BACKOFF,
    AddressRefused,
    FetchRequest,
    fetch_feeds,
    is_public_address,
    next_attempt_delay,
    retry_after,
)
from pipeline.models import FetchResult

MB = 1_000_000


def fetch(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 5.0,
    max_bytes: int = 10 * MB,
    configured_url: str | None = None,
    network: object = None,
) -> FetchResult | FetchError:
    request = FetchRequest("f", url, etag, last_modified, configured_url=configured_url)
    ((_, outcome),) = fetch_feeds(
        [request],
        timeout=timeout,
        max_bytes=max_bytes,
        concurrency=4,
        network=network,  # type: ignore[arg-type]
    )
    return outcome


def ok(outcome: FetchResult | FetchError) -> FetchResult:
    assert isinstance(outcome, FetchResult), f"expected a result, got the error {outcome}"
    return outcome


def failed(outcome: FetchResult | FetchError) -> FetchError:
    assert isinstance(outcome, FetchError), f"expected an error, got {outcome}"
    return outcome


def test_200_sends_our_user_agent_and_encodings(feed_server: FeedServer) -> None:
    result = ok(fetch(feed_server.url("arxiv-cs.xml")))
    assert result.status == 200
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()
    assert result.last_modified  # SimpleHTTPRequestHandler sends Last-Modified
    assert result.permanent_url is None
    (path, headers), *_ = feed_server.requests
    assert path == "/arxiv-cs.xml"
    assert headers["User-Agent"].startswith(f"digest/{__version__} ")
    assert {c.strip() for c in headers["Accept-Encoding"].split(",")} == {"gzip", "deflate", "br"}
    assert "If-None-Match" not in headers and "If-Modified-Since" not in headers


def test_304_with_last_modified(feed_server: FeedServer) -> None:
    first = ok(fetch(feed_server.url("arxiv-cs.xml")))
    second = ok(fetch(feed_server.url("arxiv-cs.xml"), last_modified=first.last_modified))
    assert second.status == 304 and second.content is None
    assert second.last_modified == first.last_modified
    assert feed_server.requests[-1][1]["If-Modified-Since"] == first.last_modified


def test_304_with_etag(feed_server: FeedServer) -> None:
    first = ok(fetch(feed_server.url("etag/hf-papers.xml")))
    assert first.status == 200 and first.etag and first.etag.startswith('"')
    second = ok(fetch(feed_server.url("etag/hf-papers.xml"), etag=first.etag))
    assert second.status == 304 and second.content is None and second.etag == first.etag
    assert feed_server.requests[-1][1]["If-None-Match"] == first.etag
    # A changed feed answers 200 with a new ETag.
    (feed_server.directory / "hf-papers.xml").write_text("<feed/>")
    third = ok(fetch(feed_server.url("etag/hf-papers.xml"), etag=first.etag))
    assert third.status == 200 and third.etag != first.etag


@pytest.mark.parametrize(
    ("code", "message"),
    [(404, "HTTP 404 Not Found"), (410, "HTTP 410 Gone"), (500, "HTTP 500 Internal Server Error")],
)
def test_error_statuses(feed_server: FeedServer, code: int, message: str) -> None:
    error = failed(fetch(feed_server.url(f"status/{code}")))
    assert str(error) == message
    assert error.status == code and error.retry_after is None


def test_429_and_503_carry_retry_after(feed_server: FeedServer) -> None:
    error = failed(fetch(feed_server.url("status/429?retry_after=120")))
    assert str(error) == "HTTP 429 Too Many Requests"
    assert error.retry_after == timedelta(seconds=120)
    assert next_attempt_delay(1, error) == timedelta(seconds=120)
    later = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    error = failed(fetch(feed_server.url(f"status/503?retry_after={quote(later)}")))
    assert error.status == 503 and error.retry_after is not None
    assert timedelta(minutes=119) < error.retry_after <= timedelta(hours=2)
    # Without Retry-After a 429 backs off like any failure.
    error = failed(fetch(feed_server.url("status/429")))
    assert error.retry_after is None and next_attempt_delay(1, error) == timedelta(minutes=5)


def test_retry_after_values() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert retry_after("0", now) == timedelta(0)
    assert retry_after(" 3600 ", now) == timedelta(hours=1)
    assert retry_after("Sun, 29 Nov 2026 12:30:00 GMT", now) == timedelta(minutes=30)
    assert retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now) == timedelta(0)  # in the past
    assert retry_after("99999999999", now) == timedelta(days=7)  # capped
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def test_backoff_doubles_from_five_minutes_to_a_day() -> None:
    delays = [next_attempt_delay(n) for n in range(1, 12)]
    minutes = [int(d.total_seconds() // 60) for d in delays]
    assert minutes == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 1440, 1440]
    assert next_attempt_delay(10_000) == MAX_BACKOFF
    assert next_attempt_delay(1, FetchError("HTTP 410 Gone", status=410)) == MAX_BACKOFF


def test_a_trickling_server_costs_the_timeout_not_more(feed_server: FeedServer) -> None:
    # One byte every 0.2 s: every read succeeds well within any per-read timeout, so only a
    # total deadline stops it. It must cost ~1 s, not 1 s per chunk.
    started = time.monotonic()
    error = failed(fetch(feed_server.url("trickle?every=0.2&total=20"), timeout=1.0))
    took = time.monotonic() - started
    assert str(error) == "timed out after 1s"
    assert 0.95 <= error.elapsed < 1.5 and took < 2.0


def test_a_server_that_never_answers_costs_the_timeout(feed_server: FeedServer) -> None:
    started = time.monotonic()
    error = failed(fetch(feed_server.url("hang?seconds=20"), timeout=1.0))
    assert str(error) == "timed out after 1s" and time.monotonic() - started < 2.0


def test_a_body_over_the_cap_is_refused(feed_server: FeedServer) -> None:
    error = failed(fetch(feed_server.url("huge?bytes=3000000"), max_bytes=MB))
    assert str(error) == "feed is larger than the 1,000,000-byte limit"
    # Without Content-Length the body is cut while it streams in.
    started = time.monotonic()
    error = failed(fetch(feed_server.url("huge?bytes=50000000&no_length=1"), max_bytes=MB))
    assert "larger than the 1,000,000-byte limit" in str(error) and time.monotonic() - started < 3


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "br"])
def test_compressed_bodies_are_decoded(feed_server: FeedServer, coding: str) -> None:
    result = ok(fetch(feed_server.url(f"{coding}/arxiv-cs.xml")))
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()
    assert "content-encoding" not in {k.lower() for k in result.headers}


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_the_cap_holds_after_decompression(feed_server: FeedServer, coding: str) -> None:
    # 50 MB of zeros compress to ~50 kB (gzip) or a few bytes (brotli): the cap is on what
    # they expand to, and the decoder stops at it instead of inflating everything.
    error = failed(fetch(feed_server.url(f"bomb/{coding}?mb=50"), max_bytes=MB))
    assert "larger than the 1,000,000-byte limit" in str(error)
    assert error.elapsed < 2


def test_a_gzip_body_just_under_the_cap_is_fine(feed_server: FeedServer) -> None:
    (feed_server.directory / "big.xml").write_bytes(b"<rss>" + b" " * (MB - 100) + b"</rss>")
    result = ok(fetch(feed_server.url("gzip/big.xml"), max_bytes=MB))
    assert result.content is not None and len(result.content) == MB - 89
    assert gzip.compress(result.content)  # sanity: it is the file


def test_redirects_are_followed_up_to_five(feed_server: FeedServer) -> None:
    result = ok(fetch(feed_server.url("chain/5")))
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()
    assert result.permanent_url is None  # 302s do not move the feed
    error = failed(fetch(feed_server.url("chain/6")))
    assert str(error) == "more than 5 redirects"


def test_a_redirect_loop_is_named(feed_server: FeedServer) -> None:
    error = failed(fetch(feed_server.url("loop/a")))
    assert str(error) == f"redirect loop at {feed_server.url('loop/a')}"
    assert [p for p, _ in feed_server.requests] == ["/loop/a", "/loop/b"]


@pytest.mark.parametrize("code", [301, 308])
def test_a_permanent_redirect_moves_the_feed(feed_server: FeedServer, code: int) -> None:
    result = ok(fetch(feed_server.url(f"redirect/{code}?to=/arxiv-cs.xml")))
    assert result.permanent_url == feed_server.url("arxiv-cs.xml")
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()


def test_a_temporary_redirect_in_the_chain_keeps_the_feed_where_it_was(feed_server: FeedServer) -> None:
    to_temporary = quote("/redirect/302?to=/arxiv-cs.xml", safe="")
    result = ok(fetch(feed_server.url(f"redirect/301?to={to_temporary}")))
    # 301 to B, then B 302 to C: the feed now lives at B (the temporary hop is not followed up).
    assert result.permanent_url == feed_server.url("redirect/302?to=/arxiv-cs.xml")
    to_permanent = quote("/redirect/301?to=/arxiv-cs.xml", safe="")
    result = ok(fetch(feed_server.url(f"redirect/302?to={to_permanent}")))
    assert result.permanent_url is None


@pytest.fixture
def untrusted_https(feed_server: FeedServer) -> Iterator[str]:
    """The feed server's files over HTTPS, with a certificate from a CA digest does not trust."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FeedHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.directory = str(feed_server.directory)  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_https_certificates_are_verified_also_after_a_redirect_from_http(
    feed_server: FeedServer, untrusted_https: str
) -> None:
    secure = f"{untrusted_https}/arxiv-cs.xml"
    for url in (secure, feed_server.url(f"redirect/302?to={quote(secure, safe='')}")):
        error = failed(fetch(url))
        assert "CERTIFICATE_VERIFY_FAILED" in str(error), str(error)
    # In one run, plain http next to https: each scheme has its own connection pool.
    requests = [FetchRequest("plain", feed_server.url("arxiv-cs.xml")), FetchRequest("secure", secure)]
    outcomes = dict(fetch_feeds(requests, timeout=5, max_bytes=10 * MB, concurrency=4))
    assert ok(outcomes[requests[0]]).content == (DATA / "arxiv-cs.xml").read_bytes()
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed(outcomes[requests[1]]))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd12:3456::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:93.184.216.34", True),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_a_redirect_from_a_public_address_to_a_private_one_is_refused(feed_server: FeedServer) -> None:
    port = feed_server.base.rsplit(":", 1)[1]
    network = fake_network(
        {
            "feeds.example.net": ["93.184.216.34"],
            "mirror.example.net": ["93.184.216.35"],
            "intranet.example.net": ["10.0.0.8"],
        }
    )
    public = f"http://feeds.example.net:{port}"

    def via(target: str) -> FetchResult | FetchError:
        return fetch(f"{public}/redirect/302?to={quote(target, safe='')}", network=network)

    # To another public name: followed.
    result = ok(via(f"http://mirror.example.net:{port}/arxiv-cs.xml"))
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()
    # To a loopback address, or a name that resolves to a private address: refused.
    error = failed(via(f"http://127.0.0.1:{port}/arxiv-cs.xml"))
    assert isinstance(error, AddressRefused)
    assert str(error) == (
        "refused to connect to the non-public address 127.0.0.1: the feed's configured URL is public"
    )
    error = failed(via(f"http://intranet.example.net:{port}/arxiv-cs.xml"))
    assert isinstance(error, AddressRefused) and "intranet.example.net (10.0.0.8)" in str(error)
    backend = network.backend
    assert isinstance(backend, LoopbackBackend)
    # The refused addresses were never connected to.
    assert "10.0.0.8" not in backend.addresses and "127.0.0.1" not in backend.addresses
    assert [p for p, _ in feed_server.requests].count("/arxiv-cs.xml") == 1


def test_a_private_configured_url_may_redirect_to_private_addresses(feed_server: FeedServer) -> None:
    # 127.0.0.1 is private, so the feed's owner evidently means a local server.
    target = quote(feed_server.url("arxiv-cs.xml"), safe="")
    result = ok(fetch(feed_server.url(f"redirect/302?to={target}")))
    assert result.content == (DATA / "arxiv-cs.xml").read_bytes()
    # The same holds for a made-up name that resolves privately.
    port = feed_server.base.rsplit(":", 1)[1]
    network = fake_network({"nas.example.net": ["192.168.1.20"]})
    result = ok(fetch(f"http://nas.example.net:{port}/redirect/302?to={target}", network=network))
    assert result.status == 200


def test_a_moved_feed_is_still_judged_by_its_configured_url(feed_server: FeedServer) -> None:
    port = feed_server.base.rsplit(":", 1)[1]
    network = fake_network({"feeds.example.net": ["93.184.216.34"]})
    # The stored URL (after a move) is a private address, but the configured URL is public.
    error = failed(
        fetch(
            feed_server.url("arxiv-cs.xml"),
            configured_url=f"http://feeds.example.net:{port}/feed.xml",
            network=network,
        )
    )
    assert isinstance(error, AddressRefused)


def test_one_hung_feed_does_not_delay_the_others(feed_server: FeedServer) -> None:
    requests = [FetchRequest("hung", feed_server.url("hang?seconds=20"))] + [
        FetchRequest(name, feed_server.url(f"{name}.xml")) for name in ("arxiv-cs", "hf-papers", "lab-blog")
    ]
    started = time.monotonic()
    outcomes = {
        request.feed: outcome
        for request, outcome in fetch_feeds(requests, timeout=1.5, max_bytes=MB, concurrency=8)
    }
    took = time.monotonic() - started
    assert str(failed(outcomes["hung"])) == "timed out after 1.5s"
    for name in ("arxiv-cs", "hf-papers", "lab-blog"):
        result = ok(outcomes[name])
        assert result.content and result.elapsed < 1.0
    assert took < 2.5


def test_concurrency_is_bounded(feed_server: FeedServer) -> None:
    # Four feeds that each take 0.5 s, two at a time: ~1 s in all, not ~0.5 s.
    requests = [FetchRequest(f"slow{i}", feed_server.url(f"hang?seconds=0.5&i={i}")) for i in range(4)]
    started = time.monotonic()
    fetch_feeds(requests, timeout=5, max_bytes=MB, concurrency=2)
    assert 0.9 < time.monotonic() - started < 2.5


def test_local_files_use_size_and_mtime_as_validator(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes((DATA / "atom.xml").read_bytes())
    first = ok(fetch(str(feed)))
    assert first.content and first.status is None and first.last_modified
    assert ok(fetch(str(feed), last_modified=first.last_modified)).content is None
    missing = failed(fetch(str(tmp_path / "missing.xml")))
    assert str(missing).startswith("cannot read ") and "No such file" in str(missing)
    assert "larger than" in str(failed(fetch(str(feed), max_bytes=1024)))


def test_a_refused_connection_is_an_error_for_that_feed() -> None:
    from conftest import free_port

    error = failed(fetch(f"http://127.0.0.1:{free_port()}/feed.xml"))
    assert str(error).startswith("cannot connect:")
