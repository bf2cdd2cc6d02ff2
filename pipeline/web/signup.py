"""``BASE/signup``: anyone may subscribe (``[web] signup = true``), with double opt-in.

The form takes an address and the topics (every topic the config defines); the answer is the
same whatever the address is (new, waiting, subscribed, unsubscribed), so the page tells no
one who is subscribed. The email goes to the address only, through the digest's own transport
(``[smtp]``, else the Maildir outbox): to a new address a confirmation link
(``BASE/signup/confirm/TOKEN``, signed and timed, good for ``[web] signup_expires`` and
once), to a subscriber a note with their preferences link. Opening the link changes nothing
(mail scanners open links): its page has the button that confirms. A confirmed sign-up is a
subscriber like the config's (:mod:`pipeline.run.audience`); an unconfirmed one is pruned
after ``signup_expires``.

Abuse limits, counted in the state database (so every ``serve`` process shares them), per
hour: ``signup_per_client`` requests from one client (an IPv4 address, or an IPv6 /64),
``signup_per_address`` emails to one address, ``signup_per_hour`` emails in all. The client
is the peer of the connection; behind a reverse proxy listed in ``[web] trusted_proxies``, the
right-most address of ``X-Forwarded-For`` that is not a trusted proxy (the header is
anyone's to write: it is read only from a trusted peer, and only its proxies' part of it).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, request

from ..config import Settings, email_address
from ..errors import ConfigError, DeliveryError
from ..store import Signup, Store
from .app import page_templates
from .context import Site, page, web
from .forms import check_form, form_token
from .links import reader_link, site_url, subscriber_subject
from .tokens import signer

log = logging.getLogger("digest")

blueprint = Blueprint("signup", __name__)

FORM = "signup"
FORM_SUBJECT = "signup"  # (the form acts for no one yet: its token signs only the form)
CONFIRM_PATH = "/signup/confirm/{token}"
EMAIL_TEMPLATE = "signup-confirm.txt.j2"
MAX_ADDRESS = 254  # RFC 5321's limit for a forward path
RETRY_AFTER = "3600"


def _enabled() -> Site:
    """The site, when sign-up is on (a plain 404 otherwise: the page does not exist)."""
    site = web()
    if not site.settings.web.signup:
        abort(404)
    return site


@blueprint.get("/signup")
def signup_page() -> Response:
    """The sign-up form."""
    _enabled()
    return _form()


@blueprint.post("/signup")
def sign_up() -> Response:
    """Take a sign-up: the same answer for every address (the email says the rest)."""
    site = _enabled()
    check_form(FORM, FORM_SUBJECT)
    settings, store, now = site.settings, site.store, site.clock()
    typed = request.form.get("email", "").strip()
    chosen = request.form.getlist("topics")
    try:
        if not typed or len(typed) > MAX_ADDRESS:
            raise ValueError("give your email address")
        address = email_address(typed)
    except ValueError:
        return _form(400, error="That is not an email address. Nothing was sent.", typed=typed, chosen=chosen)
    if any(name not in settings.topics for name in chosen):
        abort(400, description="That form named a topic this digest does not have. Nothing was sent.")
    if not chosen:
        return _form(400, error="Choose at least one topic. Nothing was sent.", typed=typed, chosen=chosen)
    topics = [name for name in settings.topics if name in chosen]  # (in the config's order)

    store.prune_signups(now, settings.web.signup_expires)
    limit = store.admit_signup(
        now,
        client=client_key(settings),
        address=address,
        per_client=settings.web.signup_per_client,
        per_address=settings.web.signup_per_address,
        per_hour=settings.web.signup_per_hour,
    )
    if limit == "client":
        return _busy(
            429, "There were too many sign-ups from your network in the last hour. Nothing was sent."
        )
    if limit == "total":
        return _busy(503, "Too many sign-ups are arriving just now. Nothing was sent.")
    if limit is None:  # ("address": one went there within the hour; the answer stays the same)
        try:
            send_signup_email(settings, store, address, topics, now)
        except (DeliveryError, ConfigError) as exc:
            store.release_signup_email(address, now)
            log.error("signup to=%s error=%r", address, str(exc))
            return _busy(503, "The confirmation email could not be sent just now. Nothing was sent.")
    return _form(sent=address)


def send_signup_email(
    settings: Settings, store: Store, address: str, topics: list[str], now: datetime
) -> None:
    """Email ``address`` its confirmation link, or, already a subscriber, its preferences link.

    The request is stored (waiting) before the email goes, so its link works when it arrives.
    """
    from ..compose import signup_message
    from ..deliver import transport_factory
    from ..run.audience import known_subscriber
    from ..sign import load_signer

    if address.lower() in store.suppressions():
        log.info("signup to=%s skipped=suppressed", address)  # (it bounced: no mail goes there)
        return
    subscriber = known_subscriber(settings, store, address)
    choices = store.reader_choice(address)
    unsubscribed = choices is not None and choices.unsubscribed_at is not None
    values: dict[str, Any] = {
        "title": settings.digest.title,
        "email": address,
        "topics": [settings.topic_title(name) for name in topics],
        "expires": _duration(settings.web.signup_expires.total_seconds()),
        "already": subscriber is not None and not unsubscribed,
        "confirm_url": "",
        "preferences_url": "",
    }
    if values["already"]:
        values["preferences_url"] = reader_link(settings, "preferences", address)
        subject = f"You already get {settings.digest.title}"
    else:
        code = secrets.token_urlsafe(12)
        store.request_signup(address, topics, code, now)
        values["confirm_url"] = confirm_url(settings, address, code, now)
        subject = f"Confirm your subscription to {settings.digest.title}"
    text = page_templates(settings, html=False).get_template(EMAIL_TEMPLATE).render(**values)
    message = signup_message(
        sender=settings.sender,
        list_id=settings.list_id,
        recipient=address,
        subject=subject,
        text=text,
        now=now,
    )
    signer = load_signer(settings)  # (signed like digests: DKIM covers every mail we send)
    if signer is not None:
        message = signer.sign(message)
    transport = transport_factory(settings)()
    try:
        transport.send(message)
    finally:
        transport.close()
    log.info("signup to=%s kind=%s", address, "known" if values["already"] else "confirm")


def confirm_url(settings: Settings, address: str, code: str, now: datetime) -> str:
    """The confirmation link of one request: it signs the address, the request's code and the time."""
    token = signer(settings.web).timed_token("confirm", f"{subscriber_subject(address)}\x1f{code}", now)
    return site_url(settings, CONFIRM_PATH.format(token=token))


@blueprint.get("/signup/confirm/<token>")
def confirm_page(token: str) -> Response:
    """The page behind the confirmation link: what it will do, and the button (nothing changes yet)."""
    site = _enabled()
    email, signup = _request_for(token)
    if signup is None:
        return _confirmed_or_gone(email)
    titles = [site.settings.topic_title(t) for t in signup.pending_topics or () if t in site.settings.topics]
    return page("web/signup_confirm.html", email=signup.address, topics=titles, done=False)


@blueprint.post("/signup/confirm/<token>")
def confirm(token: str) -> Response:
    """Confirm: the address is a subscriber from now on (the token is the credential)."""
    site = _enabled()
    settings, store, now = site.settings, site.store, site.clock()
    email, waiting = _request_for(token)
    if waiting is None or waiting.code is None:
        return _confirmed_or_gone(email)
    done = store.confirm_signup(email, waiting.code, now)
    if done is None:  # (confirmed by a request that came just before)
        return _confirmed_or_gone(email)
    in_config = settings.subscriber(email)
    if in_config is not None and done.topics is not None:
        # A config subscriber who signed up again: the config still writes them; the topics
        # they picked are their own choice (and confirming subscribed them again).
        topics = None if set(done.topics) == set(in_config.topics) else list(done.topics)
        store.record_reader_choices(email, now, topics=topics, unsubscribed_at=None, unsubscribed_via=None)
    log.info("signup confirmed=%s", done.address)
    return _confirmed_or_gone(email, done=True)


def _request_for(token: str) -> tuple[str, Signup | None]:
    """The address a confirmation token names, and its waiting request (None: used, replaced,
    or expired); a 404 page for a bad, altered or expired token."""
    site = web()
    subject = site.signer.timed_subject("confirm", token, site.clock(), site.settings.web.signup_expires)
    if subject is None or "\x1f" not in subject:
        abort(404, description=GONE)
    email, _, code = subject.partition("\x1f")
    signup = site.store.signup(email)
    waiting = signup is not None and signup.code is not None and secrets.compare_digest(signup.code, code)
    return email, signup if waiting else None


GONE = (
    "This confirmation link is not valid any more: it was used already, a newer one was sent, "
    "or it expired. Nothing was changed. You can sign up again."
)


def _confirmed_or_gone(email: str, *, done: bool = False) -> Response:
    """The address's subscription as it stands (to the holder of its link), else a 404."""
    from ..run.audience import known_subscriber

    site = web()
    settings = site.settings
    subscriber = known_subscriber(settings, site.store, email)
    choices = site.store.reader_choice(email)
    if subscriber is None or (choices is not None and choices.unsubscribed_at is not None):
        abort(404, description=GONE)
    topics = list(choices.topics) if choices is not None and choices.topics else subscriber.topics
    schedule = choices.schedule if choices is not None and choices.schedule else str(subscriber.schedule)
    return page(
        "web/signup_confirm.html",
        email=subscriber.email,
        topics=[settings.topic_title(t) for t in topics if t in settings.topics],
        done=True,
        fresh=done,
        schedule=schedule,
        zone=str(settings.zone_of(subscriber)),
        preferences_url=reader_link(settings, "preferences", subscriber.email),
    )


def client_key(settings: Settings) -> str:
    """Who is asking, for the per-client limit: the peer, or behind a trusted proxy the
    client it names; an IPv6 client as its /64 (one site's network, as ISPs hand them out)."""
    trusted = [ipaddress.ip_network(n) for n in settings.web.trusted_proxies]
    peer = _ip(request.remote_addr or "")
    if peer is not None and trusted and _within(peer, trusted):
        forwarded = ",".join(request.headers.getlist("X-Forwarded-For"))
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            found = _ip(hop)
            if found is None:
                break  # (garbled: the last proxy's peer is all that is known)
            peer = found
            if not _within(found, trusted):
                break
    if peer is None:
        return request.remote_addr or "unknown"
    if peer.version == 6:
        return str(ipaddress.ip_network(f"{peer}/64", strict=False))
    return str(peer)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        found = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    return any(address in network for network in networks)


def _form(
    status: int = 200,
    *,
    error: str | None = None,
    typed: str = "",
    chosen: list[str] | None = None,
    sent: str = "",
) -> Response:
    settings = web().settings
    from .preferences import topic_choices

    selected = set(chosen or ())
    return page(
        "web/signup.html",
        status,
        topics=topic_choices(settings, selected),
        typed=typed,
        error=error,
        sent=sent,
        expires=_duration(settings.web.signup_expires.total_seconds()),
        csrf=form_token(FORM, FORM_SUBJECT),
    )


def _busy(status: int, message: str) -> Response:
    response = page(
        "web/error.html",
        status,
        code=status,
        name="Try again later",
        message=message + " Try again in an hour.",
    )
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def _duration(seconds: float) -> str:
    hours = round(seconds / 3600)
    if hours >= 48 and hours % 24 == 0:
        return f"{hours // 24} days"
    return f"{hours} hours" if hours != 1 else "1 hour"

