"""``digest serve`` as a real process on a free loopback port, for the web tests.

The ``web_server`` fixture (tests/conftest.py) gives a :class:`WebServers`: pick the port
(``servers.base_url`` goes into the config's ``[digest] base_url``), then ``servers.start(config)``
runs ``python -m pipeline.cli --config CONFIG serve --port PORT`` with the signing key
``WEB_SECRET`` in ``DIGEST_WEB_SECRET``, waits until it answers ``GET /``, and returns a
:class:`ServeProcess` with an ``httpx.Client`` on it. Every process is stopped (SIGTERM) at
the end of the test; its output is kept for assertions and failure messages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WEB_SECRET = "test-signing-key-0123456789-abcdefghijklmnop"  # at least 32 characters
OLD_WEB_SECRET = "old-signing-key-0123456789-abcdefghijklmnopq"
START_WITHIN = 20.0  # seconds; the import of Flask and the app takes ~1 s here


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_env(secret: str | None = WEB_SECRET, **extra: str) -> dict[str, str]:
    """The environment for a ``digest`` child process: this one's, with the signing key."""
    env = {k: v for k, v in os.environ.items() if k != "DIGEST_WEB_SECRET"}
    if secret is not None:
        env["DIGEST_WEB_SECRET"] = secret
    env.update(extra)
    return env


@dataclass
class ServeProcess:
    """One running ``digest serve``."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client
    output: bytes = b""

    def stop(self) -> None:
        """SIGTERM, then wait; the output is kept in ``output``."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                out, _ = self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, _ = self.process.communicate()
            self.output += out


@dataclass
class WebServers:
    """Starts ``digest serve`` processes for one test, on one free port chosen up front."""

    port: int = field(default_factory=_free_port)
    running: list[ServeProcess] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: Path, *, env: dict[str, str] | None = None) -> ServeProcess:
        """Start serving ``config`` and wait until it answers; AssertionError if it exits."""
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "--config",
                str(config),
                "serve",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env if env is not None else web_env(),
        )
        served = ServeProcess(self.base_url, process, httpx.Client(base_url=self.base_url, timeout=10))
        self.running.append(served)
        deadline = time.monotonic() + START_WITHIN
        while True:
            if process.poll() is not None:
                out = process.stdout.read() if process.stdout else b""
                served.output += out
                raise AssertionError(
                    f"digest serve exited with {process.returncode}: {out.decode(errors='replace')}"
                )
            try:
                if served.client.get("/").status_code == 200:
                    return served
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("digest serve did not answer in time")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for served in self.running:
            served.stop()


WEB_CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"
base_url = "{base_url}"
{digest}

[[feeds]]
name = "arxiv-cs"
url = "{feed}"

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

[[subscribers]]
email = "ada@example.org"
name = "Ada"
topics = ["spiking", "rl"]
schedule = "daily 07:00"

[[subscribers]]
email = "Grace@Example.org"
topics = ["diffusion"]

{web}
{smtp}
"""

DATA = Path(__file__).parent / "data"


def web_config(tmp_path: Path, base_url: str, *, smtp: str = "", digest: str = "", web: str = "") -> Path:
    """A config with three topics (spiking, rl, diffusion) over tests/data/arxiv-cs.xml, two
    subscribers (ada: spiking + rl; Grace@Example.org: diffusion) and ``base_url``."""
    feed = tmp_path / "arxiv-cs.xml"
    if not feed.exists():
        feed.write_bytes((DATA / "arxiv-cs.xml").read_bytes())
    path = tmp_path / "digest.toml"
    path.write_text(
        WEB_CONFIG.format(base_url=base_url, feed=feed, digest=digest, web=web, smtp=smtp),
        encoding="utf-8",
    )
    return path


def add_entries(tmp_path: Path, *titles: str) -> None:
    """New items at the end of the config's feed (tmp_path/arxiv-cs.xml), published now."""
    feed = tmp_path / "arxiv-cs.xml"
    now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    items = "".join(
        f"<item><title>{title}</title><link>https://example.org/new/{abs(hash(title))}</link>"
        f"<guid>new-{abs(hash(title))}</guid><description>{title}.</description>"
        f"<pubDate>{now}</pubDate></item>"
        for title in titles
    )
    feed.write_text(
        feed.read_text(encoding="utf-8").replace("</channel>", items + "</channel>"), encoding="utf-8"
    )


def digest(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``digest`` command line as a child process (with the signing key)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else web_env(),
    )
