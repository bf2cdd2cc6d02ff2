"""Send built messages: over SMTP, or into a Maildir when no ``[smtp]`` is configured.

Both transports have the same interface (``send``, ``close``, context manager). The SMTP
transport opens TLS and logs in once, reuses the connection for every message and reconnects
when the server drops it. Replies are classified the way Mailman 3 does: 2xx sent; 4xx, 552
and connection problems transient (retry later); other 5xx permanent.
"""

from __future__ import annotations

import mailbox
import smtplib
import ssl
import threading
import time
from pathlib import Path
from typing import Protocol

from .config import Settings, SmtpSection
from .errors import DeliveryError
from .models import OutgoingMessage


class Transport(Protocol):
    """Something that delivers one message at a time."""

    def send(self, message: OutgoingMessage) -> None: ...

    def close(self) -> None: ...


def is_transient(code: int) -> bool:
    """Whether an SMTP reply code means "try again later" (4xx, and 552 per RFC 5321 4.5.3.1.10)."""
    return 400 <= code < 500 or code == 552


class MaildirTransport:
    """Writes each message into ``<maildir>/new`` (mailbox writes to tmp/ and renames)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.box = mailbox.Maildir(self.path, create=True)
        except OSError as exc:
            raise DeliveryError(f"cannot open Maildir {self.path}: {exc}", transient=True) from exc

    def send(self, message: OutgoingMessage) -> None:
        try:
            self.box.add(message.data)
        except OSError as exc:
            raise DeliveryError(f"cannot write to Maildir {self.path}: {exc}", transient=True) from exc

    def close(self) -> None:
        self.box.close()

    def __enter__(self) -> MaildirTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RateLimit:
    """At most ``rate`` events per second, shared by every thread that uses it."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            time.sleep(delay)


class SmtpTransport:
    """One reusable SMTP connection (none / STARTTLS / implicit TLS, optional AUTH)."""

    def __init__(self, config: SmtpSection, rate: RateLimit | None = None) -> None:
        self.config = config
        self.rate = rate or RateLimit(config.rate)
        self.conn: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        timeout = cfg.timeout.total_seconds()
        where = f"{cfg.host}:{cfg.effective_port}"
        try:
            conn: smtplib.SMTP
            if cfg.security == "tls":
                conn = smtplib.SMTP_SSL(
                    cfg.host, cfg.effective_port, timeout=timeout, context=self._context()
                )
            else:
                conn = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=timeout)
            conn.ehlo()
            if cfg.security == "starttls":
                conn.starttls(context=self._context())
                conn.ehlo()
            if cfg.username:
                password = cfg.password()
                if password is None:
                    conn.close()
                    raise DeliveryError(
                        "SMTP login needs a password: set the environment variable "
                        f"{cfg.password_env or '(smtp.password_env is not set)'}",
                        transient=True,
                    )
                conn.login(cfg.username, password)
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{where}: login refused ({exc.smtp_code} {_text(exc.smtp_error)})",
                transient=True,
                code=exc.smtp_code,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}", transient=True, code=exc.smtp_code
            ) from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise DeliveryError(f"{where}: TLS failed: {exc}", transient=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(
                f"{where}: cannot connect: {exc or type(exc).__name__}", transient=True
            ) from exc
        return conn

    def send(self, message: OutgoingMessage) -> None:
        """Send one message to its one recipient, or raise a classified DeliveryError."""
        self.rate.wait()
        if self.conn is None:
            self.conn = self._connect()
        try:
            refused = self.conn.sendmail(message.sender, [message.recipient], message.data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(message.recipient, (550, b"recipient refused"))
            self._after_reply(code)
            raise DeliveryError(f"{code} {_text(reply)}", transient=is_transient(code), code=code) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            self._after_reply(exc.smtp_code)
            raise DeliveryError(
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                transient=is_transient(exc.smtp_code),
                code=exc.smtp_code,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self._drop()
            raise DeliveryError(
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                transient=is_transient(exc.smtp_code),
                code=exc.smtp_code,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            # Dropped or timed out mid-transaction: the server may or may not have the message
            # (RFC 1047); it is retried later with the same Message-ID.
            self._drop()
            raise DeliveryError(f"connection lost: {exc or type(exc).__name__}", transient=True) from exc
        if refused:
            code, reply = refused[message.recipient]
            raise DeliveryError(f"{code} {_text(reply)}", transient=is_transient(code), code=code)

    def _after_reply(self, code: int) -> None:
        # 421: the server is closing the channel (RFC 5321 3.8).
        if code == 421:
            self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                self._drop()

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def open_transport(settings: Settings) -> SmtpTransport | MaildirTransport:
    """SMTP when ``[smtp]`` is configured, else the Maildir outbox."""
    if settings.smtp is not None:
        return SmtpTransport(settings.smtp)
    return MaildirTransport(settings.outbox.maildir)
