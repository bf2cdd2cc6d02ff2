"""The "more / less like this" links beside each entry of a digest, and signing a run's
per-email links.

``BASE/v/TOKEN/ENTRY/VOTE``: the token is the reader's (purpose ``vote``, one per email, so
that an entry's links can be made once per run and the token put in per email: see
:mod:`pipeline.render.splice`), the entry is its id in the state database, the vote ``more``
or ``less``. Opening the link changes nothing; its page records the vote with a button
(:mod:`.feedback`). Like :mod:`.links`, this module loads no Flask: ``render`` uses it.
"""

from __future__ import annotations

from ..config import Settings
from .links import PATHS, site_url, subscriber_subject
from .tokens import Signer, signer

VOTE_PATH = "/v/{token}/{entry_id}/{vote}"


def vote_token(settings: Settings, email: str) -> str:
    """A subscriber's vote token (the same for every entry)."""
    return signer(settings.web).token("vote", subscriber_subject(email))


def vote_link(settings: Settings, email: str, entry_id: int, vote: str) -> str:
    """One vote link of a subscriber, as their digest carries it."""
    token = vote_token(settings, email)
    return site_url(settings, VOTE_PATH.format(token=token, entry_id=entry_id, vote=vote))


class EmailLinks:
    """What a renderer signs for each email: the key read once per run, not once per link."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._signer: Signer | None = None  # (read at the first link: ``check`` needs no key)
        self.base = site_url(settings, "")

    def vote_prefix(self, token: str) -> str:
        """``BASE/v/TOKEN/``: where a reader's vote links start (the entry and vote follow)."""
        return self.base + VOTE_PATH.partition("{entry_id}")[0].format(token=token)

    def vote_token(self, email: str) -> str:
        """The reader's vote token (as :func:`vote_token` makes it)."""
        return self._signed().token("vote", subscriber_subject(email))

    def link(self, purpose: str, email: str) -> str:
        """The reader's link for ``purpose`` (as :func:`.links.reader_link` makes it)."""
        token = self._signed().token(purpose, subscriber_subject(email))
        return self.base + PATHS[purpose].format(token=token)

    def _signed(self) -> Signer:
        if self._signer is None:
            self._signer = signer(self._settings.web)  # (a WebError, naming the variable, without a key)
        return self._signer
