"""Vote links ("more / less like this") beside each entry: each reader's token put into pieces
that every email shares, in the HTML part, the text part and the encoded message.

The pieces are rendered once per run; the token goes in per email (``render.splice``) and
compose writes it between quoted-printable soft line breaks. So these tests check that the
result is what rendering each email whole gives, that decoding the message gives exactly the
rendered text, and that the shared pieces stay shared.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.compose import _encoded_parts, digest_message
from pipeline.config import Settings
from pipeline.models import Digest
from pipeline.render import Renderer
from pipeline.render.inline import _lxml_attribute, serialised_attribute
from pipeline.web.tokens import signer
from pipeline.web.vote_links import EmailLinks, vote_link, vote_token

KEY = "render-test-signing-key-0123456789abcdef"
BASE = "https://digest.example.net/reader"


@pytest.fixture
def voting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, Digest]]:
    monkeypatch.setenv("DIGEST_WEB_SECRET", KEY)
    settings = sample_config(tmp_path, digest=f'base_url = "{BASE}"')
    return settings, sample_digests(settings, items=HOSTILE_ITEMS)


def _entry_ids(digest: Digest) -> list[int]:
    return [m.entry.id for s in digest.sections for m in s.matches]


def _decoded(data: bytes) -> tuple[str, str]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode("utf-8")
        for part in message.walk()
        if not part.is_multipart()
    }
    return parts["text/plain"], parts["text/html"]


def test_every_entry_has_its_readers_links_in_both_parts(voting: tuple[Settings, dict[str, Digest]]) -> None:
    settings, digests = voting
    renderer = Renderer(settings)
    renderer.prepare(digests.values())
    for address, digest in digests.items():
        rendered = renderer.render(digest)
        token = vote_token(settings, address)
        assert rendered.token == token
        assert signer(settings.web).subject("vote", token) == address.lower()
        for entry_id in _entry_ids(digest):
            for vote in ("more", "less"):
                link = vote_link(settings, address, entry_id, vote)
                assert link == f"{BASE}/v/{token}/{entry_id}/{vote}"
                assert f'href="{link}"' in rendered.html
                assert f"\n    {link}\n" in rendered.text  # on a line of its own: never wrapped
        assert rendered.html.count("More like this") == len(_entry_ids(digest))
        assert "dgstlink" not in rendered.html + rendered.text  # no marker left anywhere


Voting = tuple[Settings, dict[str, Digest]]


def test_pieces_with_tokens_equal_each_email_rendered_whole(voting: Voting) -> None:
    settings, digests = voting
    renderer = Renderer(settings)
    renderer.prepare(digests.values())
    for digest in digests.values():
        pieces = renderer.render(digest)
        whole = renderer.render_whole(digest)
        assert pieces.html == whole.html
        assert pieces.text == whole.text
        assert "".join(pieces.html_parts) == pieces.html
        assert "".join(pieces.text_parts) == pieces.text
    assert not renderer.whole


def test_readers_share_every_piece_but_their_token(voting: tuple[Settings, dict[str, Digest]]) -> None:
    """Two readers of the same section: the same part objects, only the token differs."""
    settings, digests = voting
    renderer = Renderer(settings)
    ada = digests["ada@example.org"]
    twin = Digest("twin@example.org", None, ada.sections, ada.topics, ada.created_at, "<twin@x>")
    renderer.prepare([ada, twin])
    a, b = renderer.render(ada), renderer.render(twin)
    assert a.token != b.token
    for parts_a, parts_b in ((a.html_parts, b.html_parts), (a.text_parts, b.text_parts)):
        assert len(parts_a) == len(parts_b)
        middle = list(zip(parts_a[1:-1], parts_b[1:-1], strict=True))
        own = [(x, y) for x, y in middle if x is not y]
        assert own and all(x is a.token and y is b.token for x, y in own)
    assert a.html.replace(a.token, b.token).replace("ada@example.org", "twin@example.org") != a.html


def test_the_message_decodes_to_exactly_the_rendered_parts(voting: Voting) -> None:
    settings, digests = voting
    renderer = Renderer(settings)
    renderer.prepare(digests.values())
    for digest in list(digests.values()) * 2:  # (the second time from the encoders' caches)
        rendered = renderer.render(digest)
        message = digest_message(settings, digest, rendered)
        text, html = _decoded(message.data)
        assert html.replace("\r\n", "\n") == rendered.html
        assert text.replace("\r\n", "\n") == rendered.text
        lines = message.data.split(b"\r\n")
        assert max(len(line) for line in lines) <= 998
        body = message.data.partition(b"\r\n\r\n")[2].split(b"\r\n")
        assert all(len(line) <= 76 for line in body)  # quoted-printable's limit
        assert not any(line.startswith(b".") for line in lines)  # canonical: no dot-stuffing needed
        assert re.search(rb"^" + re.escape(rendered.token.encode()[:60]), message.data, re.M)
        # from the shared parts' own encodings, not by encoding the whole part again
        for parts, whole in ((rendered.html_parts, rendered.html), (rendered.text_parts, rendered.text)):
            assert rendered.token in parts
            assert len(_encoded_parts(parts, whole, rendered.token)) == len(parts)


@pytest.mark.parametrize("length", [1, 60, 74, 75, 76, 77, 150, 400])
def test_tokens_of_any_length_stay_within_quoted_printable_lines(
    voting: tuple[Settings, dict[str, Digest]], length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long address makes a long token; dots (in a token) never start a line."""
    settings, digests = voting
    digest = digests["ada@example.org"]
    token = ("a." * length)[:length]
    monkeypatch.setattr(EmailLinks, "vote_token", lambda self, email: token)
    renderer = Renderer(settings)
    rendered = renderer.render(digest)
    assert rendered.html == renderer.render_whole(digest).html
    message = digest_message(settings, digest, rendered)
    text, html = _decoded(message.data)
    assert html.replace("\r\n", "\n") == rendered.html
    assert text.replace("\r\n", "\n") == rendered.text
    body = message.data.partition(b"\r\n\r\n")[2].split(b"\r\n")
    assert all(len(line) <= 76 for line in body)
    assert not any(line.startswith(b".") for line in body)


def test_no_vote_links_without_a_base_url(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = sample_digests(settings)
    renderer = Renderer(settings)
    for digest in digests.values():
        rendered = renderer.render(digest)
        assert rendered.token == ""
        assert "/v/" not in rendered.html and "like this" not in rendered.text


def test_each_renderer_has_its_own_marker_so_feed_text_cannot_collect_a_token(
    voting: tuple[Settings, dict[str, Digest]],
) -> None:
    """The marker is random: a feed cannot write it into a link to have a reader's token put there."""
    settings, _ = voting
    first, second = Renderer(settings), Renderer(settings)
    assert first._splice.marker != second._splice.marker
    assert re.fullmatch(r"[a-z0-9]{24}", first._splice.marker)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60))
def test_plain_attribute_values_are_written_as_lxml_writes_them(value: str) -> None:
    """The fast path for per-subscriber links gives what lxml gives, in every kind of attribute."""
    for tag, attr in (("a", "href"), ("img", "src"), ("a", "title"), ("img", "alt")):
        if '"' not in value:  # (a quote ends the attribute: lxml then writes it the other way)
            assert serialised_attribute(tag, attr, value) == _lxml_attribute(tag, attr, value)


READER_LINKS_HTML = re.compile(
    r'<p class="vote"[^>]*>.*?</p>\n'
    r'|<p[^>]*><a class="(?:preferences|archive|unsubscribe)"[^>]*>.*?</a></p>\n'
)
ARCHIVED_HTML = re.compile(r'<p class="archived"[^>]*>This archived copy leaves out the links[^<]*</p>\n')


def test_an_archived_copy_is_the_email_without_the_readers_links(voting: Voting) -> None:
    """What an archive page (reached from the Atom feed, read anywhere) shows: the same email,
    less every link that acts for the reader; no token of theirs at all, a line saying so."""
    settings, digests = voting
    sent, archived = Renderer(settings), Renderer(settings, reader_links=False)
    sent.prepare(digests.values())
    archived.prepare(digests.values())
    keys = signer(settings.web)
    for address, digest in digests.items():
        mail, page = sent.render(digest), archived.render(digest)
        assert page.token == ""
        assert len(ARCHIVED_HTML.findall(page.html)) == 1
        assert ARCHIVED_HTML.sub("", page.html) == READER_LINKS_HTML.sub("", mail.html)
        assert len(READER_LINKS_HTML.findall(mail.html)) == len(_entry_ids(digest)) + 3
        whole = archived.render_whole(digest)
        assert (page.html, page.text) == (whole.html, whole.text)
        for purpose in ("unsubscribe", "preferences", "vote", "archive", "feed"):
            token = keys.token(purpose, address.lower())
            assert token.split(".")[1] not in page.html + page.text, purpose
        assert "like this" not in page.html + page.text and "/v/" not in page.html + page.text
        assert "/u/" not in page.text and "/p/" not in page.text
        assert "This archived copy leaves out the links" in " ".join(page.text.split())
        assert "dgstlink" not in page.html + page.text
        # the rest of the text part is the email's, line for line
        note = ("archived copy", "to vote")
        kept = [line for line in page.text.splitlines() if not any(n in line for n in note)]
        assert set(kept) <= set(mail.text.splitlines())
