"""The Maildir transport: each message a file in ``<maildir>/new`` (written to tmp/, renamed)."""

from __future__ import annotations

import mailbox
from pathlib import Path

from ..errors import DeliveryError
from ..models import OutgoingMessage


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
