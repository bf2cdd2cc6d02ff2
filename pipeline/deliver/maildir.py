"""The Maildir transport: each message a file in ``<maildir>/new`` (written to tmp/, renamed).

With ``return_path`` (``[bounces]`` is set) each file starts with ``Return-Path: <sender>``, the
envelope sender a delivering MTA records; the message itself (and any signature) is unchanged.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from ..errors import DeliveryError
from ..models import OutgoingMessage


class MaildirTransport:
    """Writes each message into ``<maildir>/new`` (mailbox writes to tmp/ and renames)."""

    def __init__(self, path: str | Path, *, return_path: bool = False) -> None:
        self.path = Path(path)
        self.return_path = return_path  # write the envelope sender first, as a final MTA does
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
        data = message.data
        if self.return_path:  # (RFC 5321 4.4: the delivering MTA records the envelope sender)
            data = b"Return-Path: <" + message.sender.encode("utf-8") + b">\r\n" + data
        try:
            self.box.add(data)
        except OSError as exc:
            raise DeliveryError(
                f"cannot write to Maildir {self.path}: {exc}", transient=True, connection=True
            ) from exc

    def close(self) -> None:
        self.box.close()
