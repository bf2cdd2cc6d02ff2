"""Screenshots of the sample digest and of the reader pages in headless Chromium: 600 and 375 px
wide, light and dark.

``make screenshots`` runs this file: it renders Alan's digest from the example configuration
(``config/digest.toml``, its sample feeds, a fixed date, a throw-away database) and writes
``docs/digest-{600,375}-{light,dark}.png``; then it starts a real ``digest serve`` on a free
port over a copy of that config (sign-up on) and writes ``docs/web-PAGE-{600,375}-{light,dark}.png``
for the preferences, unsubscribe, vote, archive and sign-up pages (``python docs/screenshots.py
web``: only those). Chromium is the Debian package ``chromium``; it is driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``), so nothing but the standard library is needed.
The tests use ``Chromium`` and ``measure`` to check the layout (the web pages' form tests use
selenium and chromedriver instead, each with its own browser: tests/web/test_web_browser.py).
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import html
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (600, 375)
SCHEMES = ("light", "dark")
CLIP_HEIGHT = 1800  # the first screens of the email; the rest repeats the same entry layout

MEASURE = """JSON.stringify({
  viewport: window.innerWidth,
  scrollWidth: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  dark: matchMedia('(prefers-color-scheme: dark)').matches,
  background: getComputedStyle(document.body).backgroundColor,
  titles: [...document.querySelectorAll('.entry-title')].map(e => {
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return {text: e.textContent, left: r.left, right: r.right, width: r.width, height: r.height,
            visible: s.visibility === 'visible' && s.display !== 'none' && parseFloat(s.opacity) > 0,
            color: s.color};
  }),
})"""


def chromium_path() -> str | None:
    """The Chromium executable, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, executable: str | None = None) -> None:
        executable = executable or chromium_path()
        if executable is None:
            raise RuntimeError("chromium is not installed: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="digest-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        # Chromium reads commands on fd 3 and answers on fd 4: bash (which, unlike dash, takes
        # descriptors above 9) moves the pipes there.
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, executable, *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._ids = itertools.count(1)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop Chromium and remove its throw-away profile."""
        with contextlib.suppress(OSError, RuntimeError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events seen meanwhile are kept)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self._events.append(reply)

    def wait_for(self, event: str, session: str) -> None:
        """Wait for a DevTools event of this session."""
        while True:
            for seen in self._events:
                if seen.get("method") == event and seen.get("sessionId") == session:
                    self._events.remove(seen)
                    return
            self._events.append(self._read())

    def open(self, path: Path | str, *, width: int, dark: bool) -> str:
        """Load a file (or a URL) in a new tab of this width and colour scheme; return the session id."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = str(self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"])
        self.send("Page.enable", session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=width < 500,
        )
        self.send(
            "Emulation.setEmulatedMedia",
            session,
            features=[{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}],
        )
        url = path if isinstance(path, str) else path.resolve().as_uri()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return session

    def measure(self, session: str) -> dict[str, Any]:
        """Viewport, page size and every entry title's box, as the page lays them out."""
        result = self.send("Runtime.evaluate", session, expression=MEASURE, returnByValue=True)
        return dict(json.loads(result["result"]["value"]))

    def screenshot(self, session: str, out: Path, *, width: int, height: int) -> None:
        """A PNG of the top ``height`` pixels of the page."""
        shot = self.send(
            "Page.captureScreenshot",
            session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        out.write_bytes(base64.b64decode(shot["data"]))


def sample_html(folder: Path, subscriber: str = "alan@example.org") -> Path:
    """A subscriber's digest (Alan's by default) from the example config, in ``folder/digest.html``."""
    sys.path.insert(0, str(ROOT))
    from pipeline import run
    from pipeline.config import parse_settings
    from pipeline.render import Renderer
    from pipeline.store import Store

    config = ROOT / "config" / "digest.toml"
    text = config.read_text().replace('database = "state/digest.db"', f'database = "{folder / "digest.db"}"')
    settings = parse_settings(text, config)
    now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    with Store(settings.digest.database_url) as store:
        for feed in settings.feeds:
            run.fetch_all(settings, store, feeds=[feed.name], clock=lambda: now)
        wanted = settings.subscriber(subscriber)
        assert wanted is not None
        (digest,) = run.plan_digests(settings, store, [wanted], now)
    path = folder / "digest.html"
    path.write_text(Renderer(settings).render(digest).html, encoding="utf-8")
    return path


def main() -> None:
    if chromium_path() is None:
        sys.exit("chromium is not installed: apt-get install -y chromium (Debian package)")
    only_web = sys.argv[1:] == ["web"]
    with tempfile.TemporaryDirectory() as tmp, Chromium() as browser:
        if not only_web:
            digest_screenshots(browser, Path(tmp))
        web_screenshots(browser, Path(tmp) / "web")


def digest_screenshots(browser: Chromium, folder: Path) -> None:
    """``docs/digest-{600,375}-{light,dark}.png``: Alan's sample digest."""
    html = sample_html(folder)
    for width, scheme in itertools.product(WIDTHS, SCHEMES):
        session = browser.open(html, width=width, dark=scheme == "dark")
        page = browser.measure(session)
        out = ROOT / "docs" / f"digest-{width}-{scheme}.png"
        browser.screenshot(session, out, width=width, height=min(page["height"], CLIP_HEIGHT))
        overflow = page["scrollWidth"] > page["viewport"]
        print(
            f"{out.relative_to(ROOT)}: {width} px {scheme}, page {page['height']} px tall, "
            f"{len(page['titles'])} entries, horizontal overflow: {'YES' if overflow else 'no'}"
        )


# --- the reader pages of `digest serve` ----------------------------------------------------------
# A real `digest serve` on a free loopback port, over a copy of the example config (its feeds,
# a throw-away database and outbox, [web] signup on); one `digest send` first, so that the
# archive and the vote links have a digest to show. Pages a build does not have yet (404) are
# left out, and said so.

WEB_PAGES = ("preferences", "unsubscribe", "vote", "archive", "signup")
WEB_CLIP_HEIGHT = 1400
DEMO_READER = "ada@example.org"
# Down to the page's card and the body's margin below it, not the whole (taller) window: smaller files.
PAGE_BOTTOM = """Math.ceil(document.querySelector('main').getBoundingClientRect().bottom
  + parseFloat(getComputedStyle(document.body).paddingBottom))"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _digest(config: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if done.returncode != 0:
        sys.exit(f"digest {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def demo_server(folder: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A real ``digest serve`` over the demo config in ``folder``: its base URL, config, environment."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{_free_port()}"
    text = (ROOT / "config" / "digest.toml").read_text(encoding="utf-8")
    text = text.replace('database = "state/digest.db"', f'database = "{folder / "digest.db"}"')
    text = text.replace('maildir = "outbox"', f'maildir = "{folder / "outbox"}"')
    text = text.replace('url = "feeds/', f'url = "{ROOT / "config" / "feeds"}/')
    text = text.replace("\n[fetch]\n", f'base_url = "{base}"\n\n[fetch]\n', 1) + "\n[web]\nsignup = true\n"
    config = folder / "digest.toml"
    config.write_text(text, encoding="utf-8")
    env = {**os.environ, "DIGEST_WEB_SECRET": secrets.token_urlsafe(32), "PYTHONPATH": str(ROOT)}
    _digest(config, env, "send")
    port = base.rpartition(":")[2]
    command = [sys.executable, "-m", "pipeline.cli", "--config", str(config), "serve", "--port", port]
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while _status(base + "/") != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                sys.exit(f"digest serve did not start: {err}")
            time.sleep(0.1)
        yield base, config, env
    finally:
        server.terminate()
        server.wait(timeout=15)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def web_urls(base: str, config: Path, env: dict[str, str], outbox: Path) -> dict[str, str]:
    """The demo reader's page URLs: from ``digest links`` and from the digest they were sent."""
    printed = _digest(config, env, "links", "--subscriber", DEMO_READER)
    urls = dict(re.findall(r"^(\w+):\s+(\S+)$", printed, re.M))
    urls["signup"] = base + "/signup"
    for file in sorted((outbox / "new").iterdir()):
        message = email.message_from_bytes(file.read_bytes(), policy=email.policy.default)
        if DEMO_READER in str(message["To"]):
            part = message.get_body(("html",))  # type: ignore[attr-defined]
            votes = re.findall(re.escape(base) + r'/v/[^"\s]+', part.get_content() if part else "")
            if votes:
                urls["vote"] = html.unescape(votes[-1])
    return {page: urls[page] for page in WEB_PAGES if page in urls}


def web_screenshots(browser: Chromium, folder: Path) -> None:
    """``docs/web-PAGE-{600,375}-{light,dark}.png`` of every reader page the app serves."""
    with demo_server(folder) as (base, config, env):
        urls = web_urls(base, config, env, folder / "outbox")
        for name in WEB_PAGES:
            url = urls.get(name)
            if url is None or _status(url) != 200:
                print(f"web page {name}: not served by this build (skipped)")
                continue
            for width, scheme in itertools.product(WIDTHS, SCHEMES):
                session = browser.open(url, width=width, dark=scheme == "dark")
                page = browser.measure(session)
                found = browser.send("Runtime.evaluate", session, expression=PAGE_BOTTOM, returnByValue=True)
                height = min(int(found["result"]["value"]), page["height"], WEB_CLIP_HEIGHT)
                out = ROOT / "docs" / f"web-{name}-{width}-{scheme}.png"
                browser.screenshot(session, out, width=width, height=height)
                overflow = page["scrollWidth"] > page["viewport"]
                print(
                    f"{out.relative_to(ROOT)}: {width} px {scheme}, page {page['height']} px tall, "
                    f"{out.stat().st_size // 1024} KB, horizontal overflow: {'YES' if overflow else 'no'}"
                )


if __name__ == "__main__":
    main()
