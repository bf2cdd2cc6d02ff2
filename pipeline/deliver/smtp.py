"""The SMTP transport: one reusable connection (none / STARTTLS / implicit TLS, optional AUTH).

It opens TLS and logs in once, reuses the connection for every message and reconnects when
the server drops it; replies become classified :class:`DeliveryError`s. Whose fault a failure
is decides what happens to the digest (README, "Delivery: who is at fault"):

- at RCPT TO, a 5xx is about that recipient (the digest fails), unless its enhanced status
  code is 5.7.x (policy: "Client host rejected", "Relay access denied"), which is about us;
- on connect, at EHLO, STARTTLS, AUTH and MAIL FROM, a 5xx is about us or the server: the
  run stops and every digest stays pending (``operator``), as for a config mistake (an
  untrusted certificate, TLS on the wrong port, a refused login, a missing password);
- 4xx anywhere and lost connections are temporary; 552 is temporary ("mailbox full") except
  a size refusal (5.3.4, after DATA, or over the SIZE the server announced, RFC 1870), which
  fails that message for good.

Every step is bounded by ``[smtp] timeout``: a reply must be complete within it, however
slowly its lines arrive, and has at most ``MAX_REPLY_LINES`` lines.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
import threading
import time
from typing import Any

from ..config import SmtpSection
from ..errors import DeliveryError
from ..models import OutgoingMessage

MAX_REPLY_LINES = 200  # a server that sends more continuation lines than this is broken
_MAXLINE = 8192  # smtplib's own bound on a reply line
_SSL_WHERE = re.compile(r"\s*\(_ssl\.c:\d+\)")
_ENHANCED = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def is_transient(code: int) -> bool:
    """Whether an SMTP reply code means "try again later" (4xx, and 552 per RFC 5321 4.5.3.1.10)."""
    return 400 <= code < 500 or code == 552


def enhanced_status(reply: bytes) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code a reply text starts with (``5.7.1``), if any."""
    found = _ENHANCED.match(reply)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


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


class _NoReply(smtplib.SMTPServerDisconnected):
    """The server said nothing complete within the timeout."""


class _Session(smtplib.SMTP):
    """smtplib's session, with each reply bounded in time and in lines.

    smtplib applies its timeout to each read, so a server that sends one continuation line a
    second would hold a step forever.
    """

    timeout: float
    file: Any

    def getreply(self) -> tuple[int, bytes]:
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        if self.file is None:
            self.file = self.sock.makefile("rb")
        deadline = time.monotonic() + self.timeout
        lines: list[bytes] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or len(lines) >= MAX_REPLY_LINES:
                    self.close()
                    if left <= 0:
                        raise _NoReply(f"no complete reply within {self.timeout:g}s")
                    raise smtplib.SMTPServerDisconnected(f"a reply of more than {MAX_REPLY_LINES} lines")
                self.sock.settimeout(left)
                try:
                    line = self.file.readline(_MAXLINE + 1)
                except TimeoutError:
                    self.close()
                    raise _NoReply(f"no complete reply within {self.timeout:g}s") from None
                except OSError as exc:
                    self.close()
                    raise smtplib.SMTPServerDisconnected(f"connection unexpectedly closed: {exc}") from exc
                if not line:
                    self.close()
                    raise smtplib.SMTPServerDisconnected("connection unexpectedly closed")
                if len(line) > _MAXLINE:
                    self.close()
                    raise smtplib.SMTPResponseException(500, b"Line too long.")
                lines.append(line[4:].strip(b" \t\r\n"))
                try:
                    code = int(line[:3])
                except ValueError:
                    return -1, b"\n".join(lines)
                if line[3:4] != b"-":
                    return code, b"\n".join(lines)
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)


class _TlsSession(_Session, smtplib.SMTP_SSL):
    """The same, on a connection that is TLS from the start."""


class SmtpTransport:
    """One reusable SMTP connection (none / STARTTLS / implicit TLS, optional AUTH)."""

    def __init__(self, config: SmtpSection, rate: RateLimit | None = None) -> None:
        self.config = config
        self.rate = rate or RateLimit(config.rate)
        self.conn: smtplib.SMTP | None = None

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port}"

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        timeout = cfg.timeout.total_seconds()
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "tls":
                conn = _TlsSession(cfg.host, cfg.effective_port, timeout=timeout, context=_tls(cfg))
            else:
                conn = _Session(cfg.host, cfg.effective_port, timeout=timeout)
            self._hello(conn)
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise self._refusal(
                        "does not offer STARTTLS: check [smtp] port and security "
                        '(implicit TLS: security = "tls")'
                    )
                conn.starttls(context=_tls(cfg))
                self._hello(conn)
            if cfg.username:
                self._login(conn)
        except DeliveryError:
            _close_quietly(conn)
            raise
        except BaseException as exc:
            _close_quietly(conn)
            raise self._connect_error(exc) from exc
        return conn

    def _hello(self, conn: smtplib.SMTP) -> None:
        code, reply = conn.ehlo()
        if code != 250:
            code, reply = conn.helo()
            if code != 250:
                raise smtplib.SMTPHeloError(code, reply)

    def _login(self, conn: smtplib.SMTP) -> None:
        """One login, with one mechanism: a wrong password costs the account one failure per
        run, not one per mechanism (smtplib's ``login`` tries each in turn)."""
        cfg = self.config
        password = cfg.password()
        if password is None:
            raise DeliveryError(
                "SMTP login needs a password: set the environment variable "
                f"{cfg.password_env or '(smtp.password_env is not set)'}",
                transient=True,
                operator=True,
            )
        if not conn.has_extn("auth"):
            after_tls = cfg.security == "none" and conn.has_extn("starttls")
            hint = ' (it offers STARTTLS: set security = "starttls")' if after_tls else ""
            raise self._refusal(f"offers no login (AUTH) on this connection{hint}")
        offered = conn.esmtp_features["auth"].upper().split()
        mechanism = next((m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise self._refusal(
                f"offers only the login mechanisms {', '.join(offered)} (digest: CRAM-MD5, PLAIN, LOGIN)"
            )
        conn.user, conn.password = cfg.username or "", password
        method = getattr(conn, "auth_" + mechanism.lower().replace("-", "_"))
        try:
            conn.auth(mechanism, method, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            temporary = 400 <= exc.smtp_code < 500
            raise DeliveryError(
                f"{self.where}: login refused: {exc.smtp_code} {_text(exc.smtp_error)}"
                + ("" if temporary else ": check [smtp] username and the password"),
                transient=True,
                code=exc.smtp_code,
                connection=True,
                operator=not temporary,
            ) from exc

    def _refusal(self, what: str, code: int | None = None) -> DeliveryError:
        return DeliveryError(f"{self.where} {what}", transient=True, code=code, operator=True)

    def _connect_error(self, exc: BaseException) -> DeliveryError:
        """A failure while opening the session, classified (see the module docstring)."""
        cfg = self.config
        if isinstance(exc, UnicodeEncodeError):  # smtplib sends AUTH credentials as ASCII
            return self._refusal(": the [smtp] username or password has characters SMTP login cannot send")
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = _ssl_text(exc.verify_message or str(exc))
            return self._refusal(
                f": the server's certificate is not trusted ({reason}): set [smtp] ca_file "
                "to the certificate of the CA that signed it"
            )
        if isinstance(exc, ssl.SSLError):
            if cfg.security == "tls" and _answers_in_plain_text(cfg):
                return self._refusal(
                    f'does not speak TLS from the start: if it offers STARTTLS, set security = "starttls"'
                    f" (port {cfg.effective_port})"
                )
            return DeliveryError(
                f"{self.where}: TLS failed: {_ssl_text(str(exc))}", transient=True, connection=True
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            code, reply = exc.smtp_code, exc.smtp_error
            text = f"{self.where}: {code} {_text(reply)}"
            if 500 <= code < 600:
                return DeliveryError(
                    f"{text} (the server refuses this client)", transient=True, code=code, operator=True
                )
            return DeliveryError(text, transient=True, code=code, connection=True)
        # (a server that waits for a TLS handshake never greets: ask it for one, once)
        if isinstance(exc, _NoReply) and cfg.security != "tls" and _speaks_tls(cfg):
            return self._refusal(
                f'expects TLS from the start: set security = "tls" (port {cfg.effective_port})'
            )
        if isinstance(exc, (OSError, smtplib.SMTPException)):
            reason = _ssl_text(str(exc)) or type(exc).__name__
            return DeliveryError(f"{self.where}: cannot connect: {reason}", transient=True, connection=True)
        raise exc

    def send(self, message: OutgoingMessage) -> None:
        """Send one message to its one recipient, or raise a classified DeliveryError."""
        self.rate.wait()
        if self.conn is None:
            self.conn = self._connect()
        _Transaction(self, self.conn, message).run()

    def drop(self) -> None:
        """Forget the connection (the server closed it, or it can no longer be trusted)."""
        _close_quietly(self.conn)
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.conn.quit()
            self.drop()


class _Transaction:
    """One mail transaction (MAIL, RCPT, DATA, the message), each reply classified.

    When the server pipelines (RFC 2920), MAIL, RCPT and DATA go in one round trip. A
    ``canonical`` message (CRLF line ends, no line starting with a dot: ``compose`` builds them
    so) goes as it is; any other is normalised and dot-stuffed first (RFC 5321 4.5.2).
    """

    def __init__(self, transport: SmtpTransport, conn: smtplib.SMTP, message: OutgoingMessage) -> None:
        self.transport, self.conn, self.message = transport, conn, message
        self.where = transport.where
        self.sent_body = False

    def run(self) -> None:
        try:
            self._run()
        except DeliveryError:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            # Dropped or timed out mid-transaction. After the whole message went, the server
            # may have stored it (RFC 1047): it is not sent again within this run.
            self.transport.drop()
            reason = _ssl_text(str(exc)) or type(exc).__name__
            if self.sent_body:
                raise DeliveryError(
                    f"connection lost after the message was sent: {reason}", transient=True, after_data=True
                ) from exc
            raise DeliveryError(f"connection lost: {reason}", transient=True) from exc

    def _run(self) -> None:
        conn, message = self.conn, self.message
        data = message.data if message.canonical else _stuffed(message.data)
        options = self._mail_options(len(data))
        commands = [
            f"MAIL FROM:<{message.sender}>{options}",
            f"RCPT TO:<{message.recipient}>",
            "DATA",
        ]
        if conn.has_extn("pipelining"):
            conn.send("".join(f"{c}\r\n" for c in commands).encode("utf-8"))
            mail, rcpt, start = conn.getreply(), conn.getreply(), conn.getreply()
        else:
            mail = self._command(commands[0])
            rcpt = self._command(commands[1]) if mail[0] == 250 else (0, b"")
            start = self._command(commands[2]) if rcpt[0] in (250, 251) else (0, b"")
        failed = mail[0] != 250 or rcpt[0] not in (250, 251)
        if start[0] == 354 and failed:
            conn.send(b".\r\n")  # a server that said 354 anyway gets an empty message ended at once
            conn.getreply()
        if mail[0] != 250:
            self._refused("MAIL FROM", *mail)
        if rcpt[0] not in (250, 251):
            self._refused("RCPT TO", *rcpt)
        if start[0] != 354:
            self._refused("DATA", *start)
        conn.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        self.sent_body = True
        code, reply = conn.getreply()
        if code != 250:
            self._refused("the end of DATA", code, reply)

    def _command(self, line: str) -> tuple[int, bytes]:
        self.conn.send(f"{line}\r\n".encode())
        return self.conn.getreply()

    def _mail_options(self, size: int) -> str:
        conn, message = self.conn, self.message
        options = ""
        if not (message.sender.isascii() and message.recipient.isascii()):
            if not conn.has_extn("smtputf8"):
                raise DeliveryError(
                    f"{self.where} cannot take the internationalised address (no SMTPUTF8)",
                    transient=False,
                )
            options += " SMTPUTF8"
        if conn.has_extn("size"):  # RFC 1870: say how big; refuse at once what cannot fit
            limit = conn.esmtp_features["size"].strip()
            if limit.isdigit() and 0 < int(limit) < size:
                raise DeliveryError(
                    f"message too big: {size} bytes, over the {int(limit)} bytes {self.where} takes (SIZE)",
                    transient=False,
                )
            options += f" SIZE={size}"
        return options

    def _refused(self, step: str, code: int, reply: bytes) -> None:
        """Raise the classified error for a refusal at ``step`` (resetting the transaction)."""
        if code == 421:  # the server is closing the transmission channel (RFC 5321 3.8)
            self.transport.drop()
        elif code > 0:
            try:
                self.conn.rset()
            except (OSError, smtplib.SMTPException):
                self.transport.drop()  # (the next message reconnects)
        text = f"{code} {_text(reply)}"
        status = enhanced_status(reply)
        if code < 0:  # not a reply at all: the server's fault, and maybe it has the message
            self.transport.drop()
            raise DeliveryError(
                f"unreadable reply at {step}: {text}", transient=True, after_data=step == "the end of DATA"
            )
        if code == 552 and (step in ("MAIL FROM", "the end of DATA") or status == (5, 3, 4)):
            # (RFC 1870: a 552 to MAIL FROM with SIZE= is about this message's size)
            size = len(self.message.data)
            raise DeliveryError(f"message too big ({size} bytes): {text}", transient=False, code=code)
        policy = step == "RCPT TO" and status is not None and status[1] == 7  # 5.7.x: about us
        if 500 <= code < 600 and (step == "MAIL FROM" or policy):
            raise DeliveryError(
                f"{self.where} refused at {step}: {text} (about this sender or client, not "
                "the recipient: check [smtp] from, username and the server's policy)",
                transient=True,
                code=code,
                operator=True,
            )
        raise DeliveryError(text, transient=is_transient(code), code=code, recipient=step == "RCPT TO")


def _stuffed(data: bytes) -> bytes:
    """Any message in SMTP's wire form: CRLF line ends, leading dots doubled (RFC 5321 4.5.2)."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")


def _tls(config: SmtpSection) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name (made only for TLS:
    loading the certificate store is slow)."""
    return ssl.create_default_context(cafile=config.ca_file)


def _probe_timeout(config: SmtpSection) -> float:
    return min(5.0, config.timeout.total_seconds())


def _answers_in_plain_text(config: SmtpSection) -> bool:
    """Whether the port greets in plain text (so implicit TLS is the wrong setting)."""
    try:
        with socket.create_connection((config.host, config.effective_port), _probe_timeout(config)) as sock:
            return sock.recv(4).startswith(b"220")
    except OSError:
        return False


def _speaks_tls(config: SmtpSection) -> bool:
    """Whether the port answers a TLS handshake (it expects implicit TLS, not a greeting)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((config.host, config.effective_port), _probe_timeout(config)) as sock,
            context.wrap_socket(sock, server_hostname=config.host),
        ):
            return True
    except ssl.SSLError as exc:
        return "alert" in str(exc).lower()  # a TLS server that did not like us is still TLS
    except OSError:
        return False


def _close_quietly(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()


def _ssl_text(text: str) -> str:
    """An error text without OpenSSL's source locations (``(_ssl.c:1006)``)."""
    return _SSL_WHERE.sub("", text).strip()


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())
