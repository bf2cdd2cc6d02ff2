"""The bounce mailbox: an IMAP folder (stdlib imaplib, TLS verified) or a local Maildir.

Both readers have one interface (:class:`BounceMailbox`): ``messages(skip)`` yields each message
with a reference (``UID 17``, or its file name) and a key that stays its own while it is in the
folder (``UIDVALIDITY/UID``; the Maildir unique name, without the ``:2,`` flags), oldest first,
at most ``FETCH_LIMIT`` of them, passing over (unfetched, and not counted against the limit)
the keys in ``skip``: the messages an earlier reading left, so a pile of them never stops new
bounces from being read. ``present`` then holds the key of every message the folder listed.
``move(message)`` puts a processed one into ``[bounces] processed_folder``. Nothing is ever
deleted that was not first copied:

- IMAP: ``UID MOVE`` (RFC 6851) when the server offers it; else ``UID COPY``, and only once the
  copy succeeded ``UID STORE +FLAGS (\\Deleted)`` and, with UIDPLUS (RFC 4315), ``UID EXPUNGE``
  of that one message (never a plain EXPUNGE or CLOSE, which would also remove what another
  client marked deleted). Messages are read with ``BODY.PEEK[]``, so one left in place stays
  unread; messages already marked ``\\Deleted`` are skipped.
- Maildir: a rename into the Maildir++ sub-folder ``.<processed_folder>`` (its ``cur/``), on
  the same file system, so a message is in one folder or the other, never neither.

TLS: implicit (``imap_security = "tls"``, port 993) or STARTTLS (143), always with a context
that verifies the certificate and the host name (``ca_file`` for a private CA); a server
that offers no STARTTLS is refused, never used in the clear.
"""

from __future__ import annotations

import contextlib
import imaplib
import ssl
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import BouncesSection
from ..errors import BounceError

FETCH_LIMIT = 500  # messages read per run at most: a flooded mailbox is worked off over runs


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    """One message of the bounce mailbox: how to name it, and its bytes."""

    ref: str  # "UID 17" or the Maildir file name
    data: bytes
    key: str  # "UIDVALIDITY/UID", or the Maildir unique name: the same at each reading


class BounceMailbox(Protocol):
    """Where bounces are read from (a context manager)."""

    where: str
    present: frozenset[str]  # the keys of all messages the last messages() listed

    def __enter__(self) -> BounceMailbox: ...

    def __exit__(self, *exc: object) -> None: ...

    def messages(self, skip: Collection[str] = ()) -> Iterator[MailboxMessage]: ...

    def move(self, message: MailboxMessage) -> None: ...


def open_mailbox(config: BouncesSection) -> BounceMailbox:
    """The mailbox ``[bounces]`` names (IMAP or Maildir); BounceError when it names none."""
    if config.imap_host:
        return ImapMailbox(config)
    if config.maildir:
        return MaildirMailbox(config)
    raise BounceError("[bounces] names no mailbox: set imap_host (and the login) or maildir")


def _quoted(name: str) -> str:
    """A mailbox name as an IMAP quoted string (RFC 3501 9: ``"`` and ``\\`` escaped)."""
    if not name.isascii() or any(c in name for c in "\r\n"):
        raise BounceError(f"folder name {name!r}: only ASCII names without line breaks are supported")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapMailbox:
    """An IMAP folder over TLS; ``prefer_move=False`` uses COPY, STORE and EXPUNGE even where
    MOVE is offered (the path servers without RFC 6851 take)."""

    def __init__(self, config: BouncesSection, *, prefer_move: bool = True) -> None:
        self.config = config
        self.prefer_move = prefer_move
        self.where = f"imap://{config.imap_host}:{config.imap_effective_port}/{config.imap_folder}"
        self.conn: imaplib.IMAP4 | None = None
        self.capabilities: set[str] = set()
        self.uidvalidity = ""
        self.present: frozenset[str] = frozenset()
        self._created = False

    def __enter__(self) -> ImapMailbox:
        self.conn = self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            # LOGOUT, never CLOSE: CLOSE expunges every \Deleted message, ours or not.
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self.conn.logout()
            self.conn = None

    def _connect(self) -> imaplib.IMAP4:
        cfg = self.config
        host, port = str(cfg.imap_host), cfg.imap_effective_port
        timeout = cfg.timeout.total_seconds()
        password = cfg.imap_password()
        if password is None:
            raise BounceError(
                f"[bounces] IMAP login needs a password: set the environment variable {cfg.imap_password_env}"
            )
        context = ssl.create_default_context(cafile=cfg.ca_file)
        conn: imaplib.IMAP4 | None = None
        step = "connect"
        try:
            if cfg.imap_security == "tls":
                conn = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
            else:
                conn = imaplib.IMAP4(host, port, timeout=timeout)
                if "STARTTLS" not in conn.capabilities:
                    raise BounceError(f"{host}:{port} offers no STARTTLS: the login would go in the clear")
                conn.starttls(ssl_context=context)
            step = "login"
            conn.login(str(cfg.imap_username), password)
            step = "capability"
            # (servers announce MOVE and UIDPLUS only once logged in; imaplib keeps the first list)
            status, reply = conn.capability()
            if status == "OK" and reply and isinstance(reply[-1], bytes):
                self.capabilities = set(reply[-1].decode("ascii", "replace").upper().split())
            else:
                self.capabilities = set(conn.capabilities)
            status, reply = conn.select(_quoted(cfg.imap_folder))
            if status != "OK":
                raise BounceError(f"{self.where}: cannot open folder {cfg.imap_folder!r}: {_text(reply)}")
            # UIDs name messages only within one UIDVALIDITY (RFC 3501 2.3.1.1): part of each key.
            _, validity = conn.response("UIDVALIDITY")
            self.uidvalidity = _text(validity) if validity and validity[0] is not None else ""
        except BounceError:
            _logout(conn)
            raise
        except ssl.SSLCertVerificationError as exc:
            _logout(conn)
            raise BounceError(
                f"{host}:{port}: the server's certificate is not trusted ({exc.verify_message}): "
                "set [bounces] ca_file to the certificate of the CA that signed it"
            ) from exc
        except imaplib.IMAP4.error as exc:
            _logout(conn)
            hint = ": check [bounces] imap_username and the password" if step == "login" else ""
            raise BounceError(f"{host}:{port}: {step} failed: {_text(exc.args)}{hint}") from exc
        except UnicodeEncodeError as exc:  # (imaplib sends the login as ASCII)
            _logout(conn)
            raise BounceError(
                f"{host}:{port}: the [bounces] imap_username or password has characters IMAP cannot send"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            _logout(conn)
            raise BounceError(f"{host}:{port}: cannot connect: {exc}") from exc
        return conn

    def _conn(self) -> imaplib.IMAP4:
        if self.conn is None:
            raise BounceError(f"{self.where}: not connected")
        return self.conn

    def messages(self, skip: Collection[str] = ()) -> Iterator[MailboxMessage]:
        conn = self._conn()
        try:
            status, found = conn.uid("SEARCH", "UNDELETED")
            if status != "OK":
                raise BounceError(f"{self.where}: SEARCH failed: {_text(found)}")
            uids = [uid.decode() for uid in (found[0] or b"").split()]
            listed = [(f"{self.uidvalidity}/{uid}", uid) for uid in uids]
            self.present = frozenset(key for key, _ in listed)
            wanted = [(key, uid) for key, uid in listed if key not in skip][:FETCH_LIMIT]
            for key, uid in wanted:
                status, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                data = next((p[1] for p in parts if isinstance(p, tuple) and len(p) > 1), None)
                if status != "OK" or not isinstance(data, bytes):
                    continue  # (expunged meanwhile by another client)
                yield MailboxMessage(f"UID {uid}", data, key)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise BounceError(f"{self.where}: {exc}") from exc

    def move(self, message: MailboxMessage) -> None:
        conn = self._conn()
        uid = message.ref.removeprefix("UID ")
        target = _quoted(self.config.processed_folder)
        try:
            self._create_target(conn, target)
            if self.prefer_move and "MOVE" in self.capabilities:
                status, reply = conn.uid("MOVE", uid, target)
                if status != "OK":
                    raise BounceError(f"{self.where} {message.ref}: MOVE failed: {_text(reply)}")
                return
            status, reply = conn.uid("COPY", uid, target)
            if status != "OK":
                raise BounceError(f"{self.where} {message.ref}: COPY failed, left in place: {_text(reply)}")
            # Only now, with the copy made: mark it deleted, and expunge that one message.
            status, reply = conn.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
            if status != "OK":
                raise BounceError(
                    f"{self.where} {message.ref}: copied, but not marked deleted: {_text(reply)}"
                )
            if "UIDPLUS" in self.capabilities:
                conn.uid("EXPUNGE", uid)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise BounceError(f"{self.where} {message.ref}: {exc}") from exc

    def _create_target(self, conn: imaplib.IMAP4, target: str) -> None:
        if self._created:
            return
        status, reply = conn.create(target)
        # (an existing folder answers NO [ALREADYEXISTS]: fine; any other refusal shows at COPY)
        del status, reply
        self._created = True


def _logout(conn: imaplib.IMAP4 | None) -> None:
    if conn is not None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()
        with contextlib.suppress(OSError):
            conn.shutdown()


def _text(reply: object) -> str:
    if isinstance(reply, list | tuple):
        return " ".join(_text(r) for r in reply if r is not None)
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(str(reply).split())


class MaildirMailbox:
    """A local Maildir's ``new/`` and ``cur/``; processed messages go to its ``.<folder>``."""

    def __init__(self, config: BouncesSection) -> None:
        self.root = Path(str(config.maildir))
        self.where = str(self.root)
        self.processed = self.root / f".{config.processed_folder}"
        self.present: frozenset[str] = frozenset()
        if "/" in config.processed_folder or config.processed_folder.startswith("."):
            raise BounceError(f"[bounces] processed_folder {config.processed_folder!r}: a plain folder name")

    def __enter__(self) -> MaildirMailbox:
        if not (self.root / "cur").is_dir() and not (self.root / "new").is_dir():
            raise BounceError(f"{self.root} is not a Maildir (it has no new/ or cur/)")
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def messages(self, skip: Collection[str] = ()) -> Iterator[MailboxMessage]:
        files: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.root / sub
            if folder.is_dir():
                files += [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
        files.sort(key=lambda f: f.name)
        self.present = frozenset(_unique(f.name) for f in files)
        for file in [f for f in files if _unique(f.name) not in skip][:FETCH_LIMIT]:
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                continue  # (taken by another reader meanwhile)
            except OSError as exc:
                raise BounceError(f"{file}: cannot read: {exc}") from exc
            yield MailboxMessage(f"{file.parent.name}/{file.name}", data, _unique(file.name))

    def move(self, message: MailboxMessage) -> None:
        source = self.root / message.ref
        name = source.name if ":2," in source.name else f"{source.name}:2,"
        try:
            for sub in ("tmp", "new", "cur"):
                (self.processed / sub).mkdir(parents=True, exist_ok=True)
            (self.processed / "maildirfolder").touch()  # (Maildir++: marks a sub-folder)
            source.rename(self.processed / "cur" / name)
        except OSError as exc:
            raise BounceError(f"{source}: cannot move to {self.processed}: {exc}") from exc


def _unique(name: str) -> str:
    """A Maildir file's unique name: without the ``:2,FLAGS`` a mail reader may add or change
    (moving it from ``new/`` to ``cur/``), so it is the same message's key either way."""
    return name.split(":", 1)[0]
