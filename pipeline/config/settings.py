"""The sections of ``digest.toml`` as frozen pydantic models, and :class:`Settings`, the whole file.

Relative paths in the file resolve against the folder the file is in (the validation context's
``base_dir``). The value types come from :mod:`pipeline.config.values`; they are imported here
at run time because pydantic resolves the models' annotations in this module.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import unicodedata
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .values import (
    Duration,
    Email,
    EnvName,
    Mailbox,
    Name,
    ScheduleValue,
    TimeZone,
    ascii_domain,
    is_loopback,
    parse_schedule,
)

DEFAULT_CONFIG = Path("config/digest.toml")
LIST_LABEL_LIMIT = 60  # characters of the title's slug in the list id
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


class _Section(BaseModel):
    # validate_default: defaults such as database = "state/digest.db" resolve like given values.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)


def _resolve(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the config file's folder (URLs pass through)."""
    if "://" in value:
        return value
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return str(path)


class DigestSection(_Section):
    title: str = Field("Paper Digest", min_length=1, max_length=200)
    database: str = "state/digest.db"
    lookback: Duration = timedelta(days=7)
    max_entries: int = Field(30, ge=1, le=1000)
    send_empty: StrictBool = False  # strict: "yes" or 1 is a mistake, not true
    timezone: TimeZone = ZoneInfo("UTC")
    templates: str | None = None
    summary: Literal["sentences", "words"] = "sentences"  # shown: the first sentences, or words up to the cap
    summary_sentences: int = Field(2, ge=1, le=10)
    summary_words: int = Field(120, ge=5, le=2000)  # a hard cap in both modes
    images: StrictBool = False
    base_url: str | None = Field(None, pattern=r"^https?://\S+$")
    admin: Email | None = None
    retain: Duration = timedelta(days=90)
    render_workers: int | None = Field(None, ge=0, le=16)  # for large sends; None: one per spare core

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        # The public address of ``digest serve``: every link in a digest and on its pages is
        # built from it (never from a request's Host header). Links are capabilities, so they
        # travel over TLS; plain http only to this machine (a test, a reverse proxy's backend).
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            raise ValueError(
                f"{value!r} is plain http: links carry reader tokens, so use https:// "
                "(http:// only for localhost or 127.0.0.1)"
            )
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{value!r} is not a plain site address like https://digest.example.org")
        return value.rstrip("/")

    @field_validator("database")
    @classmethod
    def _database(cls, value: str, info: ValidationInfo) -> str:
        return value if "://" in value else _resolve(value, info)

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @property
    def database_url(self) -> str:
        """An SQLAlchemy URL for ``database`` (a plain path means an SQLite file)."""
        return self.database if "://" in self.database else f"sqlite:///{self.database}"


class FetchSection(_Section):
    every: Duration = timedelta(hours=1)
    timeout: Duration = timedelta(seconds=20)
    max_bytes: int = Field(10_000_000, ge=1024)
    concurrency: int = Field(8, ge=1, le=64)
    alert_after: Duration = timedelta(hours=24)


class SmtpSection(_Section):
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password_env: EnvName | None = None
    from_: Mailbox = Field(alias="from")
    rate: float | None = Field(None, gt=0)
    connections: int = Field(1, ge=1, le=32)
    ca_file: str | None = None
    timeout: Duration = timedelta(seconds=30)
    retries: int = Field(3, ge=1, le=10)
    retry_delay: Duration = timedelta(seconds=2)
    give_up_after: Duration = timedelta(days=2)
    allow_plaintext_auth: StrictBool = False

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _no_password_in_the_clear(self) -> SmtpSection:
        # AUTH PLAIN / LOGIN send the password as base64: without TLS anyone on the path reads it.
        if (
            self.username
            and self.security == "none"
            and not self.allow_plaintext_auth
            and not is_loopback(self.host)
        ):
            raise ValueError(
                f'username is set but security = "none": the password would cross the network '
                f'to {self.host} unencrypted. Use security = "starttls" or "tls", or set '
                "allow_plaintext_auth = true if that network is trusted"
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"none": 25, "starttls": 587, "tls": 465}[self.security]

    def password(self) -> str | None:
        """The password from the environment variable ``password_env`` names, if any."""
        return os.environ.get(self.password_env) if self.password_env else None


class OutboxSection(_Section):
    maildir: str = "outbox"
    from_: Mailbox = Field("Paper Digest <digest@localhost.localdomain>", alias="from")

    @field_validator("maildir")
    @classmethod
    def _maildir(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class FeedConfig(_Section):
    name: Name
    url: str = Field(min_length=1)
    every: Duration | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(("http://", "https://")):
            return value
        if "://" in value and not value.startswith("file://"):
            raise ValueError(f"unsupported URL {value!r}: use http(s):// or a local file path")
        return _resolve(value.removeprefix("file://"), info)

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


class TopicConfig(_Section):
    title: str | None = Field(None, max_length=200)
    keywords: list[Annotated[str, Field(min_length=1)]] = []
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    query: str | None = None
    feeds: list[str] = []


class SubscriberConfig(_Section):
    email: Email
    name: str | None = Field(None, max_length=200)
    topics: list[str] = Field(min_length=1)
    schedule: ScheduleValue = parse_schedule("daily 07:00")
    timezone: TimeZone | None = None


class WebSection(_Section):
    """``[web]``: the reader-facing web app, ``digest serve`` (see :mod:`pipeline.web`)."""

    listen: str = Field("127.0.0.1:8080", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
    secret_env: EnvName = "DIGEST_WEB_SECRET"
    # Keys retired by a rotation, still accepted on links already sent (never used to sign).
    old_secrets_env: EnvName | None = None
    # --- sign-up (pipeline/web/signup.py): anyone may subscribe, with double opt-in ---
    signup: StrictBool = False
    signup_expires: Duration = timedelta(hours=48)  # an unconfirmed sign-up is forgotten after this
    signup_schedule: ScheduleValue = parse_schedule("daily 07:00")  # sign-ups start with this schedule
    signup_per_address: int = Field(1, ge=1, le=10)  # confirmation emails per address per hour
    signup_per_client: int = Field(5, ge=1, le=10_000)  # sign-up requests per client per hour
    signup_per_hour: int = Field(100, ge=1, le=100_000)  # confirmation emails per hour, in all
    # Peers (addresses or networks) whose X-Forwarded-For names the client: a reverse proxy.
    trusted_proxies: list[str] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f"port of {value!r} must be 1 to 65535")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (like 10.0.0.1 or 10.0.0.0/8)"
                ) from None
        return out

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class BouncesSection(_Section):
    """``[bounces]``: VERP envelope senders and the bounce mailbox (see :mod:`pipeline.bounces`)."""

    address: Email  # bounce@example.org: digests go out from bounce+TOKEN@example.org
    imap_host: str | None = Field(None, min_length=1)
    imap_port: int | None = Field(None, ge=1, le=65535)
    imap_security: Literal["tls", "starttls"] = "tls"
    imap_username: str | None = Field(None, min_length=1)
    imap_password_env: EnvName | None = None
    imap_folder: str = Field("INBOX", min_length=1)
    processed_folder: str = Field("Processed", min_length=1)
    ca_file: str | None = None
    maildir: str | None = None
    hard_limit: int = Field(1, ge=1, le=100)
    soft_limit: int = Field(5, ge=1, le=100)
    every: Duration = timedelta(minutes=15)
    timeout: Duration = timedelta(seconds=30)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if "+" in value.rpartition("@")[0]:
            raise ValueError(f"{value!r} holds a +: digest adds +TOKEN itself (write the bare address)")
        return value

    @field_validator("ca_file", "maildir")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _one_mailbox(self) -> BouncesSection:
        if self.imap_host and self.maildir:
            raise ValueError("set imap_host or maildir, not both: bounces are read from one mailbox")
        if self.imap_host and not (self.imap_username and self.imap_password_env):
            raise ValueError("imap_host needs imap_username and imap_password_env (the login)")
        return self

    @property
    def imap_effective_port(self) -> int:
        return self.imap_port or {"tls": 993, "starttls": 143}[self.imap_security]

    def imap_password(self) -> str | None:
        """The IMAP password from the environment variable ``imap_password_env`` names."""
        return os.environ.get(self.imap_password_env) if self.imap_password_env else None


class WorkerSection(_Section):
    """``[worker]``: ``digest worker`` processes sharing one PostgreSQL (see :mod:`pipeline.worker`)."""

    # How long a claim on outbox rows lasts unless renewed (every sender renews at a third of
    # it): a crashed sender's digests go out again, from any host, this long after the crash.
    lease: Duration = timedelta(minutes=2)
    batch: int = Field(500, ge=1, le=5000)  # due subscribers planned per job (one transaction)
    deliver_for: Duration = timedelta(seconds=60)  # a delivery job's time budget
    tick: Duration = timedelta(minutes=1)  # how often a tick looks for due work (divides an hour)

    @field_validator("lease")
    @classmethod
    def _lease(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=3):
            raise ValueError("must be at least 3s (it is renewed every third of it)")
        return value

    @field_validator("tick")
    @classmethod
    def _tick(cls, value: timedelta) -> timedelta:
        # (a cron step: whole seconds dividing a minute, or whole minutes dividing an hour)
        seconds = value.total_seconds()
        fits = 60 % seconds == 0 if seconds < 60 else seconds % 60 == 0 and 3600 % seconds == 0
        if not seconds.is_integer() or seconds < 1 or seconds > 3600 or not fits:
            raise ValueError("must be seconds dividing a minute (1s, 2s, 5s...) or minutes dividing an hour")
        return value


class DkimSection(_Section):
    """``[dkim]``: sign every digest and alert (DKIM, RFC 6376; see :mod:`pipeline.sign`)."""

    # d= and s=: the key's public half is published at SELECTOR._domainkey.DOMAIN.
    domain: str = Field(max_length=253, pattern=r"^[^\s.@;=]+(\.[^\s.@;=]+)+$")
    selector: str = Field(max_length=63, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    key_file: str = Field(min_length=1)  # a PEM private key, unencrypted (read when a send starts)
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"  # ed25519: RFC 8463

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return ascii_domain(value.rstrip("."))

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class Settings(_Section):
    """The whole validated configuration; ``path`` is the file it came from."""

    path: Path = DEFAULT_CONFIG
    digest: DigestSection = DigestSection()
    fetch: FetchSection = FetchSection()
    smtp: SmtpSection | None = None
    outbox: OutboxSection = OutboxSection()
    feeds: list[FeedConfig] = []
    topics: dict[Name, TopicConfig] = {}
    subscribers: list[SubscriberConfig] = []
    web: WebSection = WebSection()
    worker: WorkerSection = WorkerSection()
    bounces: BouncesSection | None = None  # VERP and bounce handling (off without it)
    dkim: DkimSection | None = None  # DKIM signatures (none without it)

    def topic_title(self, name: str) -> str:
        topic = self.topics[name]
        return topic.title or name

    def subscriber(self, email: str) -> SubscriberConfig | None:
        wanted = email.strip().lower()
        return next((s for s in self.subscribers if s.email.lower() == wanted), None)

    def zone_of(self, subscriber: SubscriberConfig) -> ZoneInfo:
        return subscriber.timezone or self.digest.timezone

    def feed_interval(self, feed: FeedConfig) -> timedelta:
        return feed.every or self.fetch.every

    @property
    def sender(self) -> str:
        """The ``From`` header value for every digest."""
        return self.smtp.from_ if self.smtp else self.outbox.from_

    @property
    def list_id(self) -> str:
        """The digest's list identifier (RFC 2919): ``Title <slug.sender-domain>``.

        The identifier is ASCII, as RFC 2919 requires: the title's slug (accents dropped, any
        other character a ``-``, at most ``LIST_LABEL_LIMIT`` characters) and the sender's
        domain in its IDNA form. The title in front is free text; compose encodes it.
        """
        return f"{self.digest.title} <{list_label(self.digest.title)}.{self.list_domain}>"

    @property
    def list_domain(self) -> str:
        """The sender's domain, ASCII (punycode for an internationalised one)."""
        domain = sender_address(self.sender).rpartition("@")[2].strip("[]") or "localhost"
        return ascii_domain(domain)

    def unsubscribe_url(self, email: str) -> str:
        """Where a subscriber's unsubscribe link points: their signed one-click page on
        ``digest serve`` (``BASE/u/TOKEN``), else a mailto."""
        if self.digest.base_url:
            from ..web.links import reader_link  # (the signing key is read from the environment)

            return reader_link(self, "unsubscribe", email)
        return self._unsubscribe_mailto(email)

    def preferences_url(self, email: str) -> str | None:
        """A subscriber's signed preferences page (``BASE/p/TOKEN``); None without a base_url."""
        if self.digest.base_url:
            from ..web.links import reader_link

            return reader_link(self, "preferences", email)
        return None

    def unsubscribe_links(self, email: str) -> list[str]:
        """The targets of a digest's List-Unsubscribe header (RFC 2369), web endpoint first."""
        links = [self.unsubscribe_url(email)] if self.digest.base_url else []
        return [*links, self._unsubscribe_mailto(email)]

    def _unsubscribe_mailto(self, email: str) -> str:
        # It names the subscriber, in the header as in the footer: a request sent from another
        # of their addresses (an alias, a forwarder) still says whom to take off.
        return f"mailto:{sender_address(self.sender)}?subject={quote('unsubscribe ' + email)}"


@functools.lru_cache(maxsize=16)  # (asked for every message of a run, with the same title)
def list_label(title: str) -> str:
    """The title as an RFC 2919 list label: ASCII letters, digits and ``-``, at most
    ``LIST_LABEL_LIMIT`` characters (``Résumé hebdo`` -> ``resume-hebdo``); ``digest`` if none."""
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    if len(slug) > LIST_LABEL_LIMIT:
        slug = slug[: LIST_LABEL_LIMIT + 1]
        # at a word's end when one is near the limit
        slug = slug.rsplit("-", 1)[0] if "-" in slug[LIST_LABEL_LIMIT // 2 :] else slug[:LIST_LABEL_LIMIT]
    return slug.strip("-") or "digest"


# Cached: parseaddr is not cheap, and every digest of a run asks about the same sender.
@functools.lru_cache(maxsize=16)
def sender_address(sender: str) -> str:
    """The bare address of a ``Name <addr>`` sender."""
    return parseaddr(sender)[1]
