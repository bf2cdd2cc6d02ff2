"""Each reader's link token inside pieces every email shares (the vote links beside entries).

An entry's pieces are rendered, inlined and wrapped once per run and shared by every
subscriber, but its "more / less like this" links carry the reader's own token
(``BASE/v/TOKEN/ENTRY/more``). So entry views hold a *marker* where the token goes, each
assembled section is cut at its markers once (``cut``), and each email puts its token in
those places: nothing is rendered or inlined per subscriber. ``compose`` then writes the
token between quoted-printable soft line breaks, so the shared lines around it keep their
encodings, made once per run.

The marker is random per renderer (letters and digits: libxml2 writes it unchanged in an
``href``, Jinja escapes nothing in it): feed text cannot guess it, so a link in a feed can
never be made to carry a reader's token.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence


class TokenSplice:
    """The marker of one renderer, and cutting parts at it."""

    def __init__(self) -> None:
        self.marker = "dgstlink" + secrets.token_hex(8)
        # each piece cut once, by the piece (the same object in every section that shows it),
        # so that its parts are the same objects everywhere too: compose encodes each once
        self._cuts: dict[str, tuple[str, ...]] = {}

    def cut(self, parts: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The parts cut at the marker, the marker a part of its own; and where it is.

        Whoever fills the places in puts the email's token there: the parts around it end
        or start mid-line, a token's length never changes how they are wrapped or encoded.
        """
        out: list[str] = []
        places: list[int] = []
        cuts, marker = self._cuts, self.marker
        for part in parts:
            pieces = cuts.get(part)
            if pieces is None:
                pieces = cuts[part] = tuple(p for p in part.split(marker)) if marker in part else (part,)
            if len(pieces) == 1:
                out.append(pieces[0])
                continue
            for n, piece in enumerate(pieces):
                if n:
                    places.append(len(out))
                    out.append(marker)
                if piece:
                    out.append(piece)
        return tuple(out), tuple(places)

    def forget(self) -> None:
        """Drop the pieces cut so far (the sections that held them are being dropped)."""
        self._cuts.clear()

    def fill(self, text: str, token: str) -> str:
        """Text rendered whole, with the email's token where the marker is."""
        return text.replace(self.marker, token) if self.marker in text else text
