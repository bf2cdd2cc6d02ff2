"""Send built messages: over SMTP, or into a Maildir when no ``[smtp]`` is configured.

Both transports have one interface (``send``, ``close``). The SMTP transport opens TLS and
logs in once, reuses the connection for every message and reconnects when the server drops
it. Replies are classified as Mailman 3 does: 2xx sent; 4xx, 552 and connection problems
transient; other 5xx permanent.

:class:`Dispatcher` runs one transport per connection in worker threads, so rendering the next
digest overlaps sending the last one. A message that meets a transient error is retried a few
times within the run, seconds apart, without holding up the others. When the server cannot be
used at all (no connection, TLS or login failing even after retries) the dispatcher stops
trying and hands every remaining message back as undelivered: nothing is dropped, the caller
leaves it in the outbox for later.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import mailbox
import smtplib
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
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
            # mailbox creates cur/new/tmp only for a folder it creates itself: an existing empty
            # folder (made by hand, or by `preview --output outbox/x.html`) would be refused.
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            self.box = mailbox.Maildir(self.path, create=False)
        except OSError as exc:
            raise DeliveryError(
                f"cannot open Maildir {self.path}: {exc}", transient=True, connection=True
            ) from exc

    def send(self, message: OutgoingMessage) -> None:
        try:
            self.box.add(message.data)
        except OSError as exc:
            raise DeliveryError(
                f"cannot write to Maildir {self.path}: {exc}", transient=True, connection=True
            ) from exc

    def close(self) -> None:
        self.box.close()


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

        When the server pipelines (RFC 2920) and the message is known to have CRLF line ends
        (``compose`` makes them so; checking costs two scans of the message), MAIL, RCPT and
        DATA go in one round trip and the message goes as it is: dot-stuffed with one C-speed
        replace where a line starts with a dot, not even scanned when ``dot_free`` says none
        does (``compose``'s; a scan of 70 KB costs ~70 us): smtplib's sendmail
        would wait for each reply and rewrite every line of the message with regular
        expressions, which on a 70 KB digest costs more than the sending itself. Anything else
        takes smtplib's own way.
        """
        data, sender, recipient = message.data, message.sender, message.recipient
        plain = sender.isascii() and recipient.isascii()
        if not (plain and message.crlf and conn.has_extn("pipelining")):
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
        body = data
        if not message.dot_free and (data.startswith(b".") or b"\r\n." in data):
            body = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
        conn.send(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
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


def transport_factory(settings: Settings, rate: RateLimit | None = None) -> Callable[[], Transport]:
    """Makes a transport per connection: SMTP when ``[smtp]`` is configured, else the Maildir."""
    smtp = settings.smtp
    if smtp is not None:
        shared = rate or RateLimit(smtp.rate)
        return lambda: SmtpTransport(smtp, shared)
    maildir = settings.outbox.maildir
    return lambda: MaildirTransport(maildir)


# --- the dispatcher --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempted:
    """The end of one message's delivery in this run: sent (``error`` is None) or not."""

    key: int
    message: OutgoingMessage
    error: DeliveryError | None
    tries: int  # SMTP attempts made in this run


@dataclass(slots=True)
class _Job:
    key: int
    message: OutgoingMessage
    tries: int = 0


class Dispatcher:
    """Delivers submitted messages over ``connections`` transports in worker threads.

    ``submit`` never blocks; ``results`` returns what has finished; ``on_sent`` is called from
    the worker thread as soon as the server accepts a message. Message-level transient
    failures are retried up to ``retries`` times, ``retry_delay`` apart, while other messages
    go on. Connection-level failures are retried the same way; if the server still cannot be
    used, ``unreachable`` is set and every remaining message comes back undelivered.
    """

    def __init__(
        self,
        make_transport: Callable[[], Transport],
        *,
        connections: int = 1,
        retries: int = 3,
        retry_delay: float = 2.0,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.make_transport = make_transport
        self.on_sent = on_sent
        self.retries = retries
        self.retry_delay = retry_delay
        self.unreachable: str | None = None
        self._cond = threading.Condition()
        self._work: deque[_Job] = deque()
        self._delayed: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._done: deque[Attempted] = deque()
        self._closing = False
        self._abandoned: str | None = None
        self._threads = [
            threading.Thread(target=self._worker, name=f"smtp-{i}", daemon=True) for i in range(connections)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, message: OutgoingMessage) -> None:
        with self._cond:
            if self._abandoned:
                self._finish(_Job(key, message), DeliveryError(self._abandoned, transient=True))
            elif self.unreachable:
                self._finish(_Job(key, message), self._unreachable_error())
            else:
                self._work.append(_Job(key, message))
            self._cond.notify_all()

    def results(self, timeout: float | None = None) -> list[Attempted]:
        """Finished messages; waits up to ``timeout`` seconds for at least one (None: forever)."""
        with self._cond:
            if not self._done and timeout != 0:
                self._cond.wait_for(lambda: bool(self._done), timeout)
            done = list(self._done)
            self._done.clear()
            return done

    def abandon(self, reason: str) -> None:
        """Hand back every job not yet started; jobs in flight finish, but are not retried."""
        with self._cond:
            self._abandoned = reason
            error = DeliveryError(reason, transient=True)
            for waiting in [*self._work, *(entry[2] for entry in self._delayed)]:
                self._finish(waiting, error)
            self._work.clear()
            self._delayed.clear()

    def close(self) -> None:
        """Stop the workers after the jobs already submitted, and close every connection."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _unreachable_error(self) -> DeliveryError:
        return DeliveryError(f"server unusable: {self.unreachable}", transient=True, connection=True)

    def _finish(self, job: _Job, error: DeliveryError | None) -> None:
        # Called with the lock held.
        self._done.append(Attempted(job.key, job.message, error, job.tries))
        self._cond.notify_all()

    def _next(self) -> _Job | None:
        with self._cond:
            while True:
                now = time.monotonic()
                if self._delayed and self._delayed[0][0] <= now:
                    return heapq.heappop(self._delayed)[2]
                if self._work:
                    return self._work.popleft()
                if self._closing and not self._delayed:
                    return None
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)

    def _retry_later(self, job: _Job) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + self.retry_delay, next(self._order), job))
            self._cond.notify_all()

    def _worker(self) -> None:
        transport: Transport | None = None
        try:
            while (job := self._next()) is not None:
                if self.unreachable:
                    with self._cond:
                        self._finish(job, self._unreachable_error())
                    continue
                job.tries += 1
                try:
                    if transport is None:
                        transport = self.make_transport()
                    transport.send(job.message)
                except DeliveryError as exc:
                    self._give_up_or_retry(job, exc)
                    continue
                if self.on_sent is not None:
                    self.on_sent(job.key)  # straight from the 250: the window for a re-send stays tiny
                with self._cond:
                    self._finish(job, None)
        finally:
            if transport is not None:
                transport.close()

    def _give_up_or_retry(self, job: _Job, exc: DeliveryError) -> None:
        # A refused login will not succeed on retry; other connection failures might.
        hopeless = exc.connection and exc.code in (530, 534, 535, 538)
        if exc.transient and job.tries < self.retries and not hopeless and not self._abandoned:
            self._retry_later(job)
            return
        with self._cond:
            if exc.connection:
                # The server cannot be used now: hand back everything still waiting.
                self.unreachable = str(exc)
                for waiting in [*self._work, *(entry[2] for entry in self._delayed)]:
                    self._finish(waiting, self._unreachable_error())
                self._work.clear()
                self._delayed.clear()
            self._finish(job, exc)
