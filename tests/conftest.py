"""Shared fixtures and helpers: a real SMTP server (aiosmtpd), a real HTTP server for feeds,
configs, the CLI, reading messages back, and the state database as the tests look into it.

Nothing of ours is mocked: tests talk to servers on 127.0.0.1 over real sockets. Test modules
share helpers only through this file and ``samples.py`` (never by importing each other).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import hashlib
import http.server
import json
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import brotli
import httpcore
import lxml.html
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.config import Settings, load_settings
from pipeline.fetch import Network
from pipeline.store import QueuedDigest, Store, utcnow

ROOT = Path(__file__).resolve().parent.parent  # the repository: README.md, templates/, docs/
DATA = Path(__file__).parent / "data"


def free_port() -> int:
    # aiosmtpd's Controller cannot start on port 0 (it connects to check readiness): pick one.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Action = str | tuple[str, str] | None


@dataclass
class SmtpHandler:
    """Stores every accepted message; plays scripted faults.

    ``faults`` maps a recipient to one action per delivery attempt (the last one repeats; None
    accepts). An action is a reply such as ``"451 4.3.0 try later"`` given at RCPT, or a pair
    ``(stage, what)`` with stage RCPT or DATA and ``what`` a reply or one of: ``DROP`` (close
    the connection without replying), ``STALL`` (say nothing for ``stall`` seconds, then
    close), ``ACCEPT-DROP`` / ``ACCEPT-STALL`` (store the message first: the client cannot know
    it arrived). ``mail_faults`` holds actions for the next MAIL commands, in order.
    """

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    faults: dict[str, list[Action]] = field(default_factory=dict)
    mail_faults: deque[Action] = field(default_factory=deque)
    attempts: dict[str, int] = field(default_factory=dict)
    peers: set[Any] = field(default_factory=set)
    stall: float = 2.0
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _action(self, address: str, stage: str) -> Action:
        with self.lock:
            if stage == "RCPT":
                self.attempts[address] = self.attempts.get(address, 0) + 1
            n = self.attempts.get(address, 1)
        script = self.faults.get(address)
        if not script:
            return None
        action = script[min(n, len(script)) - 1]
        if isinstance(action, tuple):
            return action[1] if action[0] == stage else None
        return action if stage == "RCPT" else None

    async def _play(self, server: Any, action: str, envelope: Any = None) -> str:
        if action in ("ACCEPT-DROP", "ACCEPT-STALL"):
            self._store(envelope)
            action = action.removeprefix("ACCEPT-")
        if action == "STALL":
            await asyncio.sleep(self.stall)
            action = "DROP"
        if action == "DROP":
            server.transport.close()
            return "421 4.4.2 connection dropped"  # never reaches the client
        return action

    def _store(self, envelope: Any) -> None:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # Real servers (Postfix, Exim, Gmail) announce PIPELINING; aiosmtpd reads commands one
        # line at a time, so a pipelined client works with it.
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]] if self.pipelining else responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.peers.add(session.peer)
        with self.lock:
            action = self.mail_faults.popleft() if self.mail_faults else None
        if action:
            return await self._play(server, action if isinstance(action, str) else action[1])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        action = self._action(address, "RCPT")
        if action:
            return await self._play(server, action)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        action = self._action(envelope.rcpt_tos[0], "DATA")
        if action:
            return await self._play(server, action, envelope)
        self._store(envelope)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m, (_, rcpts) in zip(self.messages, self.envelopes, strict=True) if address in rcpts]


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: SmtpHandler


def start_smtp(handler: SmtpHandler, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@contextmanager
def serving_smtp(handler: SmtpHandler) -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 answering with ``handler``, for the length of the block."""
    controller, port = start_smtp(handler)
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with serving_smtp(SmtpHandler()) as server:
        yield server


class FeedHandler(http.server.SimpleHTTPRequestHandler):
    """Serves tests/data (or the server's folder), plus special paths for fetch tests:

    - ``/status/NNN[?retry_after=V]`` answers NNN (with a Retry-After header);
    - ``/redirect/NNN?to=URL`` answers NNN with ``Location: URL``;
    - ``/loop/a`` and ``/loop/b`` redirect to each other; ``/chain/N`` redirects N times
      (``/chain/N-1``, ...) and ``/chain/0`` serves arxiv-cs.xml;
    - ``/trickle?every=S&total=T`` sends headers, then one byte every S seconds for T seconds;
    - ``/hang?seconds=T`` reads the request and answers nothing for T seconds;
    - ``/huge?bytes=N`` sends N bytes of a feed-looking body;
    - ``/gzip/NAME``, ``/deflate/NAME``, ``/raw-deflate/NAME``, ``/br/NAME`` serve the file
      compressed, with its Content-Encoding;
    - ``/bomb/gzip?mb=M``, ``/bomb/br?mb=M``: M megabytes of zeros, compressed;
    - ``/etag/NAME`` serves the file with an ETag and answers If-None-Match with 304.

    Every request's path and headers are recorded in ``server.requests``.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        super().__init__(request, client_address, server, directory=server.directory)

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")
        special = getattr(self, f"_get_{parts[0].replace('-', '_')}", None)
        if special is not None:
            special(parts[1:], query)
            return
        super().do_GET()

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, name: str) -> bytes:
        return (Path(self.server.directory) / name).read_bytes()  # type: ignore[attr-defined]

    def _get_status(self, parts: list[str], query: dict[str, str]) -> None:
        headers = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
        self._reply(int(parts[0]), headers=headers)

    def _get_redirect(self, parts: list[str], query: dict[str, str]) -> None:
        self._reply(int(parts[0]), headers={"Location": query["to"]})

    def _get_loop(self, parts: list[str], query: dict[str, str]) -> None:
        self._reply(302, headers={"Location": "/loop/b" if parts[0] == "a" else "/loop/a"})

    def _get_chain(self, parts: list[str], query: dict[str, str]) -> None:
        n = int(parts[0])
        if n == 0:
            self._reply(200, self._file("arxiv-cs.xml"), {"Content-Type": "application/rss+xml"})
        else:
            self._reply(302, headers={"Location": f"/chain/{n - 1}"})

    def _get_trickle(self, parts: list[str], query: dict[str, str]) -> None:
        every, total = float(query.get("every", "0.2")), float(query.get("total", "30"))
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.end_headers()
        self.close_connection = True
        body = self._file("arxiv-cs.xml")
        deadline = time.monotonic() + total
        try:
            for byte in body:
                if time.monotonic() > deadline:
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass  # the client gave up: that is the point

    def _get_hang(self, parts: list[str], query: dict[str, str]) -> None:
        time.sleep(float(query.get("seconds", "30")))
        self.close_connection = True

    def _get_huge(self, parts: list[str], query: dict[str, str]) -> None:
        size = int(query.get("bytes", "20000000"))
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        if "no_length" not in query:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        self.close_connection = True
        head = b'<?xml version="1.0"?><rss version="2.0"><channel><title>huge</title><!--'
        try:
            self.wfile.write(head)
            sent, chunk = len(head), b"x" * 65536
            while sent < size:
                piece = chunk[: size - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass

    def _compressed(self, coding: str, body: bytes) -> None:
        if coding == "gzip":
            data = gzip.compress(body)
        elif coding == "deflate":
            data = zlib.compress(body)
        elif coding == "raw-deflate":
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            data, coding = compressor.compress(body) + compressor.flush(), "deflate"
        else:
            data = brotli.compress(body, quality=4)
        self._reply(200, data, {"Content-Encoding": coding, "Content-Type": "application/xml"})

    def _get_gzip(self, parts: list[str], query: dict[str, str]) -> None:
        self._compressed("gzip", self._file(parts[0]))

    def _get_deflate(self, parts: list[str], query: dict[str, str]) -> None:
        self._compressed("deflate", self._file(parts[0]))

    def _get_raw_deflate(self, parts: list[str], query: dict[str, str]) -> None:
        self._compressed("raw-deflate", self._file(parts[0]))

    def _get_br(self, parts: list[str], query: dict[str, str]) -> None:
        self._compressed("br", self._file(parts[0]))

    def _get_bomb(self, parts: list[str], query: dict[str, str]) -> None:
        self._compressed(parts[0], b"\0" * (int(query.get("mb", "50")) * 1_000_000))

    def _get_etag(self, parts: list[str], query: dict[str, str]) -> None:
        body = self._file(parts[0])
        tag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == tag:
            self._reply(304, headers={"ETag": tag})
        else:
            self._reply(200, body, {"ETag": tag, "Content-Type": "application/atom+xml"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class FeedServer:
    base: str
    directory: Path
    requests: list[tuple[str, dict[str, str]]]

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    """An http.server on 127.0.0.1 serving a copy of tests/data (tests may add or edit files)."""
    directory = tmp_path / "www"
    directory.mkdir()
    for file in DATA.iterdir():
        if file.is_file():
            (directory / file.name).write_bytes(file.read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FeedHandler)
    server.directory = str(directory)  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FeedServer(f"http://127.0.0.1:{server.server_address[1]}", directory, server.requests)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


class LoopbackBackend(httpcore.AsyncNetworkBackend):
    """The network, faked at the process boundary: every TCP connection, whatever address
    digest chose, goes to 127.0.0.1 on the same port. Nothing leaves the machine."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.addresses: list[str] = []  # the addresses digest asked to connect to

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.addresses.append(host)
        return await self.inner.connect_tcp("127.0.0.1", port, timeout=timeout)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def fake_network(names: dict[str, list[str]]) -> Network:
    """DNS answering ``names`` (made-up host names to made-up addresses) over the loopback backend."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise httpcore.ConnectError(f"cannot resolve {host}: unknown name")
        return names[host]

    return Network(resolve=resolve, backend=LoopbackBackend())


BASE_CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"

[fetch]
timeout = "5s"

[[feeds]]
name = "arxiv-cs"
url = "{arxiv}"

[[feeds]]
name = "hf-papers"
url = "{hf}"

[[feeds]]
name = "lab-blog"
url = "{blog}"

[topics.spiking]
title = "Spiking neural networks"
keywords = ["spiking neural network", "SNN", "neuromorphic", "liquid state machine"]
exclude = ["survey"]

[topics.rl]
title = "Reinforcement learning"
keywords = ["reinforcement learning", "RL", "bandit", "policy gradient"]
exclude = ["trading"]

[topics.diffusion]
title = "Diffusion models"
keywords = ["diffusion model", "score-based", "consistency distillation"]

[topics.robots]
title = "Robot learning"
keywords = ["robot", "legged", "manipulation"]
feeds = ["hf-papers", "lab-blog"]

[[subscribers]]
email = "ada@example.org"
name = "Ada"
topics = ["spiking", "rl"]

[[subscribers]]
email = "grace@example.org"
name = "Grace"
topics = ["diffusion", "robots"]

[[subscribers]]
email = "alan@example.org"
topics = ["rl", "robots", "spiking"]
"""


def smtp_section(server: SmtpServer, **extra: Any) -> str:
    """An [smtp] section pointing at the test server; keyword arguments override or add keys."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "from": "Test Digest <digest@example.net>",
        "timeout": "5s",
        "retry_delay": "0.05s",
    }
    values.update(extra)
    return "[smtp]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file in tmp_path; feed URLs default to the tests/data files on disk."""

    def write(text: str | None = None, *, smtp: str = "", feeds: dict[str, str] | None = None) -> Path:
        urls = {
            "arxiv": str(DATA / "arxiv-cs.xml"),
            "hf": str(DATA / "hf-papers.xml"),
            "blog": str(DATA / "lab-blog.xml"),
        }
        urls.update(feeds or {})
        body = (text if text is not None else BASE_CONFIG).format(**urls)
        path = tmp_path / "digest.toml"
        path.write_text(body + "\n" + smtp, encoding="utf-8")
        return path

    return write


def http_feeds(server: FeedServer) -> dict[str, str]:
    """BASE_CONFIG's three feeds served over HTTP (``write_config(feeds=...)``)."""
    return {
        "arxiv": server.url("arxiv-cs.xml"),
        "hf": server.url("hf-papers.xml"),
        "blog": server.url("lab-blog.xml"),
    }


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run the real ``digest`` command line in-process."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


def body_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def text_titles(text: str) -> list[str]:
    """The entry titles a text part lists, in order ("* Title" lines, unwrapped)."""
    found = re.findall(r"^\* (.+?)\n  (?:https?://|\(no link\))", text, re.M | re.S)
    return [" ".join(t.split()) for t in found]


def html_titles(html: str) -> set[str]:
    """The entry titles an HTML digest shows (text of each ``.entry-title``)."""
    tree = lxml.html.fromstring(html)
    return {" ".join(e.text_content().split()) for e in tree.find_class("entry-title")}


def body_html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


# --- the outbox: many subscribers of one paper, and the deliveries table ----------------------

ONE_PAPER_FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>One paper</title><link>https://example.org/</link>
<description>x</description>
<item><title>Spiking neural networks for everyone</title><link>https://example.org/snn</link>
<guid>https://example.org/snn</guid><description>An SNN paper.</description>
<pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item>
</channel></rss>
"""


def many(tmp_path: Path, n: int, smtp: str, *, extra_digest: str = "") -> Path:
    """A config with n subscribers, each getting a one-entry digest (``ONE_PAPER_FEED``)."""
    (tmp_path / "feed.xml").write_text(ONE_PAPER_FEED)
    subscribers = "".join(
        f'[[subscribers]]\nemail = "user{i}@example.org"\ntopics = ["snn"]\n\n' for i in range(n)
    )
    config = tmp_path / "digest.toml"
    config.write_text(
        f'[digest]\ntitle = "T"\nlookback = "3650d"\n{extra_digest}\n'
        '[[feeds]]\nname = "one"\nurl = "feed.xml"\n\n'
        '[topics.snn]\nkeywords = ["SNN"]\n\n'
        f"{subscribers}{smtp}"
    )
    return config


def state_db(tmp_path: Path) -> sqlite3.Connection:
    """The state database of a config in ``tmp_path`` (its default ``state/digest.db``).

    Opened without creating it (``mode=rw``): digest refuses an empty state file, and a test
    may look before digest has made it (sqlite3.OperationalError then)."""
    return sqlite3.connect((tmp_path / "state" / "digest.db").as_uri() + "?mode=rw", uri=True)


def delivery_states(tmp_path: Path) -> dict[str, str]:
    """Each subscriber's outbox state (pending, sending, sent, failed)."""
    with state_db(tmp_path) as db:
        return dict(db.execute("select subscriber, state from deliveries"))


def delivery_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The outbox rows, oldest first, as dicts."""
    with state_db(tmp_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from deliveries order by id")]


def queue_outbox(store: Store, rows: int) -> datetime:
    """``rows`` pending deliveries (without entries) in the outbox; returns their due time."""
    now = utcnow()
    store.enqueue(
        [
            QueuedDigest(f"u{i}@example.org", f"<{i}@test>", now, now + timedelta(days=1), (), (), "{}")
            for i in range(rows)
        ]
    )
    return now


def send_process(config: Path, *args: str) -> subprocess.Popen[bytes]:
    """``digest send`` in a child process (which a test may signal or kill)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


# --- feeds from the loopback server under a config of their own --------------------------------

FEEDS_CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"
{digest}

[fetch]
timeout = "{timeout}"
{fetch}

{feeds}

[topics.spiking]
keywords = ["spiking", "SNN", "neuromorphic"]

[topics.rl]
keywords = ["reinforcement learning", "RL", "bandit", "policy gradient"]

[topics.hf-spiking]
keywords = ["spiking"]
feeds = ["papers-hf"]

[[subscribers]]
email = "ada@example.org"
topics = ["spiking", "rl"]

[[subscribers]]
email = "grace@example.org"
topics = ["hf-spiking"]
"""


def config_text(
    feeds: dict[str, str], *, timeout: str = "5s", digest: str = "", fetch: str = "", smtp: str = ""
) -> str:
    """FEEDS_CONFIG for these feeds (name -> URL or path), with extra [digest] / [fetch] lines."""
    feed_tables = "\n".join(f'[[feeds]]\nname = "{name}"\nurl = "{url}"\n' for name, url in feeds.items())
    text = FEEDS_CONFIG.format(digest=digest, timeout=timeout, fetch=fetch, feeds=feed_tables)
    if "papers-hf" not in feeds:  # the topic restricted to papers-hf needs that feed
        text = text.replace('feeds = ["papers-hf"]', "")
    return text + "\n" + smtp


@pytest.fixture
def configure(tmp_path: Path) -> Callable[..., Path]:
    """Write a config for these feeds (name -> URL or path) and return its path."""

    def write(feeds: dict[str, str], **options: str) -> Path:
        path = tmp_path / "digest.toml"
        path.write_text(config_text(feeds, **options), encoding="utf-8")
        return path

    return write


@contextmanager
def opened(config: Path) -> Iterator[tuple[Settings, Store]]:
    """The config's settings and its store, open for the block."""
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        yield settings, store


def serve(feed_server: FeedServer, name: str, source: str | None = None, *, text: str | None = None) -> str:
    """Put a feed file on the server (from tests/data or given text) and return its URL."""
    path = feed_server.directory / name
    if text is None:
        path.write_bytes((DATA / (source or name)).read_bytes())
    else:
        path.write_text(text, encoding="utf-8")
    later = time.time() + 2 * len(feed_server.requests) + 2  # Last-Modified has 1 s resolution
    os.utime(path, (later, later))
    return feed_server.url(name)


def tls_smtp_server(
    tmp_path: Path, *, implicit: bool, handler: SmtpHandler, auth: bool = False
) -> tuple[Any, int, Path]:
    """An aiosmtpd server with a certificate for localhost from a CA made here: implicit TLS, or
    STARTTLS required; with ``auth``, login required (user ``digest``, password ``s3cret``).
    Returns the controller (stop it), the port and the CA's PEM file."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    kwargs: dict[str, Any] = (
        {"ssl_context": server_ctx} if implicit else {"tls_context": server_ctx, "require_starttls": True}
    )
    if auth:
        kwargs["authenticator"] = smtp_authenticator
        kwargs["auth_require_tls"] = not implicit
        kwargs["auth_required"] = True
    controller, port = start_smtp(handler, server_hostname="localhost", **kwargs)
    return controller, port, ca_file


def smtp_authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"digest"
        and auth_data.password == b"s3cret"
    )
    return AuthResult(success=ok, handled=False)  # handled=False: the server replies 535 itself


# --- digest serve as a real process (tests/web_server.py) ------------------------------------


@pytest.fixture
def web_server() -> Iterator[Any]:
    """Start ``digest serve`` processes on a free port: put ``web_server.base_url`` in the
    config's ``[digest] base_url``, then ``web_server.start(config)`` (see tests/web_server.py)."""
    from web_server import WebServers

    servers = WebServers()
    try:
        yield servers
    finally:
        servers.stop_all()


# --- a private PostgreSQL server (Debian's initdb), as tests/store/test_postgres.py starts it ---

POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@contextmanager
def running_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port for the block; yields its base URL
    (``postgresql+psycopg://digest@127.0.0.1:PORT``). Skips the test without the binaries."""
    import importlib.util
    import shutil
    import tempfile

    if not POSTGRES_BIN or importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL server binaries or psycopg not installed")
    bindir = POSTGRES_BIN[-1].parent
    # Not under pytest's tmp folder: the postgres account cannot enter root's private folders.
    base = Path(tempfile.mkdtemp(prefix="digest-pg-"))
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # (it refuses root)
    if prefix:
        shutil.chown(base, "postgres")
    port, data = free_port(), base / "data"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "digest"],
        check=True,
        capture_output=True,
    )
    options = f"-k {base} -h 127.0.0.1 -p {port} -c fsync=off -c max_connections=200"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    start = [*pg_ctl, "-w", "-l", str(base / "log"), "-o", options, "start"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://digest@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_postgres_database(server: str) -> str:
    """A fresh, empty database on a ``running_postgres`` server; its URL."""
    import uuid

    import sqlalchemy as sa

    name = f"t{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


# --- bounces: DSN fixtures made for a real delivery (tests/bounces/) ------------------------------

BOUNCE_FIXTURES = Path(__file__).parent / "bounces" / "fixtures"


def bounce_from_fixture(name: str, *, verp: str, recipient: str, message_id: str) -> bytes:
    """The bounce fixture ``name`` (tests/bounces/fixtures/NAME.eml) as it would come back from
    one delivery: to its envelope sender ``verp``, about ``recipient``, returning ``message_id``;
    with CRLF line ends, as IMAP carries mail."""
    text = (BOUNCE_FIXTURES / f"{name}.eml").read_bytes()
    for key, value in (("{VERP}", verp), ("{RECIPIENT}", recipient), ("{MESSAGE_ID}", message_id)):
        text = text.replace(key.encode(), value.encode())
    return re.sub(rb"\r?\n", b"\r\n", text)
