"""The Flask app: its features (one blueprint per module), security headers, error pages.

Every module of :mod:`pipeline.web` that defines a ``blueprint`` is registered, in name
order: a new page is a new module, and nothing here changes. Every response carries the
security headers below (a view may set its own Content-Security-Policy, say for an archived
email's inline styles; it still allows no script). Errors are plain pages that say what went
wrong and change nothing: a bad or altered token is a 404, a refused form a 403.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import jinja2
from flask import Blueprint, Flask, Response
from werkzeug.exceptions import HTTPException

from ..config import Settings
from ..render.templates import BUILTIN_TEMPLATES
from ..run.clock import Clock
from ..store import Store, utcnow
from .context import Site, page, web
from .tokens import signer

# No script at all, nothing from elsewhere, no framing; forms post only back here.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# For pages showing a digest as emailed: its inlined styles, and images when [digest] images is on.
EMAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a token in the URL must not leak to a linked site
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # pages show one reader's choices
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_BODY = 64 * 1024  # forms are small; a larger body is refused before it is read

site_pages = Blueprint("site", __name__)


@site_pages.get("/")
def index() -> Response:
    """A plain page: the site is up (links to readers' pages are in their emails)."""
    return page("web/index.html")


@site_pages.get("/style.css")
def style() -> Response:
    """The pages' stylesheet (``templates/web/style.css``, overridable)."""
    css = web().templates.get_template("web/style.css").render()
    return Response(css, mimetype="text/css", headers={"Cache-Control": "public, max-age=3600"})


def page_templates(settings: Settings, *, html: bool = True) -> jinja2.Environment:
    """The pages' Jinja environment: the ``[digest] templates`` override first, then ours.

    ``html=False``: for plain-text emails (no HTML escaping; every value in them is ours or a
    validated address).
    """
    folders = [str(BUILTIN_TEMPLATES)]
    if settings.digest.templates:
        folders.insert(0, settings.digest.templates)
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        autoescape=html,  # every name: ``select_autoescape`` would miss some (see FACTS)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def feature_blueprints() -> list[Blueprint]:
    """The ``blueprint`` of every module of this package, in name order."""
    found = [site_pages]
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        blueprint = getattr(module, "blueprint", None)
        if isinstance(blueprint, Blueprint):
            found.append(blueprint)
    return found


def create_app(settings: Settings, store: Store, *, clock: Clock = utcnow) -> Flask:
    """The web app on these settings and this store; a WebError if it cannot sign links."""
    app = Flask(__name__, static_folder=None, template_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["digest"] = Site(
        settings=settings,
        store=store,
        signer=signer(settings.web),  # raises now, not on the first request, without a key
        clock=clock,
        templates=page_templates(settings),
    )
    for blueprint in feature_blueprints():
        app.register_blueprint(blueprint)

    https = (settings.digest.base_url or "").startswith("https://")

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if https:  # (the proxy in front speaks TLS: browsers are to keep to it)
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        response.headers.pop("Set-Cookie", None)  # no cookies, ever (RFC 8058 asks none)
        return response

    @app.errorhandler(HTTPException)
    def error_page(exc: HTTPException) -> Response:
        code = exc.code or 500
        response = page("web/error.html", code, code=code, name=exc.name, message=_message(exc))
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    return app


def _message(exc: HTTPException) -> str:
    """What the error page says: the view's own words, else a plain sentence per code."""
    default = type(exc).description
    if exc.description and exc.description != default:
        return exc.description
    return {
        404: "This link is not valid: it may be mistyped, cut short, or no longer in use. "
        "Nothing was changed.",
        403: "This request was refused. Nothing was changed.",
        405: "This page does not take that kind of request. Nothing was changed.",
        413: "That request is too large. Nothing was changed.",
    }.get(exc.code or 500, "Something went wrong. Nothing was changed.")
