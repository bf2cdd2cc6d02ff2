"""Shared fixtures: a real SMTP server (aiosmtpd), a real HTTP server for feeds, configs, the CLI.

Nothing of ours is mocked: tests talk to servers on 127.0.0.1 over real sockets.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result

from pipeline.cli import main

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


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = SmtpHandler()
    controller, port = start_smtp(handler)
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


class FeedHandler(http.server.SimpleHTTPRequestHandler):
    """Serves tests/data (or the server's folder); /status/NNN answers NNN."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        super().__init__(request, client_address, server, directory=server.directory)

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))  # type: ignore[attr-defined]
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FeedServer(f"http://127.0.0.1:{server.server_address[1]}", directory, server.requests)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


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


def html_titles(html: str) -> set[str]:
    """The entry titles an HTML digest shows (text of each ``.entry-title``)."""
    tree = lxml.html.fromstring(html)
    return {" ".join(e.text_content().split()) for e in tree.find_class("entry-title")}


def body_html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())
