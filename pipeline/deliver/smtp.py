"""The SMTP transport: one reusable connection (none / STARTTLS / implicit TLS, optional AUTH).

It opens TLS and logs in once, reuses the connection for every message and reconnects when
the server drops it; replies become classified :class:`DeliveryError`s.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
import time

from ..config import SmtpSection
from ..errors import DeliveryError
from ..models import OutgoingMessage


def is_transient(code: int) -> bool:
    """Whether an SMTP reply code means "try again later" (4xx, and 552 per RFC 5321 4.5.3.1.10)."""
    return 400 <= code < 500 or code == 552


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

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        timeout = cfg.timeout.total_seconds()
        where = f"{cfg.host}:{cfg.effective_port}"
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "tls":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, timeout=timeout, context=_tls(cfg))
            else:
                conn = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=timeout)
            conn.ehlo()
            if cfg.security == "starttls":
                conn.starttls(context=_tls(cfg))
                conn.ehlo()
            if cfg.username:
                password = cfg.password()
                if password is None:
                    raise DeliveryError(
                        "SMTP login needs a password: set the environment variable "
                        f"{cfg.password_env or '(smtp.password_env is not set)'}",
                        transient=True,
                        connection=True,
                    )
                conn.login(cfg.username, password)
        except DeliveryError:
            _close_quietly(conn)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _close_quietly(conn)
            raise DeliveryError(
                f"{where}: login refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                transient=True,
                code=exc.smtp_code,
                connection=True,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            _close_quietly(conn)
            raise DeliveryError(
                f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}",
                transient=True,
                code=exc.smtp_code,
                connection=True,
            ) from exc
        except ssl.SSLError as exc:
            _close_quietly(conn)
            raise DeliveryError(f"{where}: TLS failed: {exc}", transient=True, connection=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            _close_quietly(conn)
            raise DeliveryError(
                f"{where}: cannot connect: {exc or type(exc).__name__}", transient=True, connection=True
            ) from exc
        return conn

    def send(self, message: OutgoingMessage) -> None:
        """Send one message to its one recipient, or raise a classified DeliveryError."""
        self.rate.wait()
        if self.conn is None:
            self.conn = self._connect()
        try:
            self._transaction(self.conn, message)
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
            # Dropped or timed out mid-transaction: the server may or may not have stored the
            # message (RFC 1047). It is retried with the same Message-ID.
            self._drop()
            raise DeliveryError(f"connection lost: {exc or type(exc).__name__}", transient=True) from exc

    @staticmethod
    def _transaction(conn: smtplib.SMTP, message: OutgoingMessage) -> None:
        """One mail transaction, raising smtplib's exceptions.

        When the server pipelines (RFC 2920) and the message is ``canonical`` (CRLF line ends,
        no line starting with a dot: ``compose`` builds them so), MAIL, RCPT and DATA go in one
        round trip and the message goes as it is. smtplib's sendmail would wait for each reply
        and rewrite every line of the message with regular expressions, which on a digest costs
        more than the sending itself. Anything else takes smtplib's own way, which normalises
        line ends and dot-stuffs (RFC 5321 4.5.2).
        """
        data, sender, recipient = message.data, message.sender, message.recipient
        plain = sender.isascii() and recipient.isascii()
        if not (plain and message.canonical and conn.has_extn("pipelining")):
            options = [] if plain else ["SMTPUTF8"]
            refused = conn.sendmail(sender, [recipient], data, mail_options=options)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
            return
        conn.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii"))
        mail, rcpt, start = conn.getreply(), conn.getreply(), conn.getreply()
        failed = mail[0] != 250 or rcpt[0] not in (250, 251)
        if start[0] == 354 and failed:
            conn.send(b".\r\n")  # a server that said 354 anyway gets an empty message ended at once
            conn.getreply()
        if mail[0] != 250:
            _reset(conn, mail[0])
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
        if rcpt[0] not in (250, 251):
            _reset(conn, rcpt[0])
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if start[0] != 354:
            _reset(conn, start[0])
            raise smtplib.SMTPDataError(*start)
        conn.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        code, reply = conn.getreply()
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def _after_reply(self, code: int) -> None:
        # 421: the server is closing the transmission channel (RFC 5321 3.8).
        if code == 421:
            self._drop()

    def _drop(self) -> None:
        _close_quietly(self.conn)
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.conn.quit()
            self._drop()


def _tls(config: SmtpSection) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name (made only for TLS:
    loading the certificate store costs ~20 ms)."""
    return ssl.create_default_context(cafile=config.ca_file)


def _reset(conn: smtplib.SMTP, code: int) -> None:
    """RSET after a refused transaction, as smtplib does (not after 421: the server is closing)."""
    if code != 421:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            conn.rset()


def _close_quietly(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())
