"""Serving the app: waitress on ``[web] listen`` (or the ``serve`` options), until a stop signal.

waitress is a production WSGI server (threads, no C build); TLS and the public name belong
to a reverse proxy in front (README, "Running the web app"), which is why ``base_url``,
not the request, says where links point.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

from ..config import Settings
from ..errors import WebError
from ..store import Store
from .app import create_app

log = logging.getLogger("digest")

THREADS = 4  # requests are short (a token check, a row or two); SQLite takes one writer anyway


def serve(
    settings: Settings,
    store: Store,
    *,
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the web app until SIGTERM or SIGINT; a WebError when it cannot start."""
    import waitress  # type: ignore[import-untyped]  # (no type stubs)

    if not settings.digest.base_url:
        raise WebError(
            f"{settings.path}: [digest] base_url is not set: digest serve needs the public "
            "address readers reach it at (links are built from it), e.g. https://digest.example.org"
        )
    app = create_app(settings, store)  # (a WebError here without the signing key)
    host = host or settings.web.host
    port = settings.web.port if port is None else port
    try:
        server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=THREADS,
            ident="digest",
            # waitress drops X-Forwarded-For & co.; with [web] trusted_proxies the app reads
            # X-Forwarded-For itself, only from those peers (pipeline/web/signup.py)
            clear_untrusted_proxy_headers=not settings.web.trusted_proxies,
        )
    except OSError as exc:
        raise WebError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    address = f"http://{host}:{getattr(server, 'effective_port', port)}"

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal=%s stopping", signal.Signals(signum).name)
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("serving address=%s public=%s", address, settings.digest.base_url)
    if ready is not None:
        ready(address)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
