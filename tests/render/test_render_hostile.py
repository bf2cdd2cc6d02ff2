"""Hostile feeds: nothing in an entry can run, track, inject headers or change the template.

Examples first, then properties (hypothesis) over arbitrary feed HTML, titles and names,
checked on the final message; the same properties check that an email assembled from
pieces is byte for byte the email inlined whole.
"""

from __future__ import annotations

import email
import email.policy
import html as htmllib
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from samples import sample_config

from pipeline.compose import compose_message
from pipeline.config import Settings
from pipeline.models import Digest, Entry, Match, Section
from pipeline.render import Renderer, safe_link
from pipeline.render.summary import MAX_IMAGE_WIDTH, MAX_IMAGES, sanitize_html

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
_TAG = re.compile(r"<[^>]*>")


def _entry(
    i: int, *, title: str = "Spiking neural networks", summary: str = "", link: str | None = None
) -> Entry:
    return Entry(
        id=i,
        title=title,
        link=link if link is not None else f"https://example.org/{i}",
        summary_html=summary,
        authors=("A. Author",),
        categories=(),
        published=NOW,
        first_seen=NOW,
        feeds=("arxiv-cs",),
    )


def _digest(
    *entries: Entry, name: str | None = "Ada", topic_title: str = "Spiking neural networks"
) -> Digest:
    matches = tuple(Match(e, "spiking", 3, ("spiking neural network", "SNN")) for e in entries)
    return Digest(
        subscriber="ada@example.org",
        name=name,
        sections=(Section("spiking", topic_title, matches),),
        topics=(topic_title,),
        created_at=NOW,
        message_id="<20261130070000.x@example.net>",
    )


def _message(settings_: Settings, renderer: Renderer, digest: Digest) -> tuple[str, EmailMessage]:
    rendered = renderer.render(digest)
    out = compose_message(
        digest,
        rendered,
        sender=settings_.sender,
        list_id="Test Digest <test-digest.example.net>",
        unsubscribe=["mailto:digest@example.net?subject=unsubscribe"],
    )
    message = email.message_from_bytes(out.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return rendered.html, message


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return sample_config(tmp_path_factory.mktemp("hostile"))


def _assert_inert(html: str) -> None:
    """No script, handler, javascript: URL, form, frame or image anywhere in the markup."""
    lowered = html.lower()
    for needle in ("<script", "<form", "<iframe", "<img", "<object", "<embed", "<svg", "<math", "<input"):
        assert needle not in lowered, needle
    for tag in _TAG.findall(lowered):
        decoded = htmllib.unescape(tag)
        assert not re.search(r"[\s/\"']on[a-z]+\s*=", decoded), tag
        compact = re.sub(r"[\s\x00-\x1f]", "", decoded)
        assert "javascript:" not in compact and "vbscript:" not in compact and "data:" not in compact, tag


# --- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        " JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "/relative/path",
        "ftp://example.org/x",
        "https://exa mple.org/",
        "https://example.org/\nBcc: x",
        "http://",
    ],
)
def test_an_entry_link_that_is_not_http_leaves_the_title_unlinked(config: Settings, link: str) -> None:
    digest = _digest(_entry(1, link=link))
    html, _ = _message(config, Renderer(config), digest)
    title = lxml.html.fromstring(html).find_class("entry-title")[0]
    assert title.find(".//a") is None and "Spiking neural networks" in title.text_content()
    assert safe_link(link) is None


def test_links_open_safely(config: Settings) -> None:
    summary = '<p><a href="https://example.org/x" target="_blank" rel="opener">x</a></p>'
    html, _ = _message(config, Renderer(config), _digest(_entry(1, summary=summary)))
    # (the header's contents links point within the email)
    links = {a.get("href"): a for a in lxml.html.fromstring(html).iter("a") if a.get("href")[0] != "#"}
    unsubscribe = [href for href, a in links.items() if "unsubscribe" in (a.get("class") or "")]
    assert len(unsubscribe) == 1  # the footer's own link, which opens no page
    # The entry's title link and the summary's link are kept (made safe, not dropped) ...
    assert set(links) - set(unsubscribe) == {"https://example.org/1", "https://example.org/x"}
    for href in ("https://example.org/1", "https://example.org/x"):
        # ... and open without a handle on this window, in no named target.
        assert links[href].get("rel") == "noopener noreferrer" and links[href].get("target") is None, href


def test_scripts_handlers_forms_frames_styles_and_images_are_removed(config: Settings) -> None:
    summary = """<p onclick="x()">Text<script>alert(1)</script><style>p{display:none}</style>
      <a href="javascript:alert(1)">a</a><a href="&#106;avascript:alert(1)">b</a>
      <a href="java&#x0A;script:alert(1)">c</a><a href=" javascript:alert(1)">d</a>
      <img src="https://t.example/p.gif"><img src=x onerror="alert(1)"><svg onload=alert(1)></svg>
      <form action="https://evil"><input name=p><button formaction="javascript:x">b</button></form>
      <iframe src="https://evil"></iframe><object data="x"></object><embed src="x">
      <math><maction actiontype="statusline" xlink:href="javascript:alert(1)">x</maction></math>
      <base href="https://evil/"><meta http-equiv="refresh" content="0;url=https://evil">
      <a href="data:text/html;base64,PHNjcmlwdD4=">e</a></p>"""
    html, message = _message(config, Renderer(config), _digest(_entry(1, summary=summary)))
    _assert_inert(html)
    assert "<style" not in html.split("</head>")[1]  # only the layout's own stylesheet
    assert "refresh" not in html and "https://evil" not in html
    text = message.get_body(("plain",))
    assert text is not None and "alert" not in text.get_content()


def test_images_only_when_asked_https_only_few_and_bounded(tmp_path: Path) -> None:
    summary = (
        '<p><img src="https://i.example/a.png" width="2400" height="1200" alt="big">'
        '<img src="http://i.example/b.png"><img src="//i.example/c.png"><img src="data:image/png;base64,AA">'
        '<img src="https://t.example/pixel.gif" width="1" height="1">'
        + "".join(f'<img src="https://i.example/{n}.png">' for n in range(10))
        + "</p>"
    )
    assert "<img" not in sanitize_html(summary)
    kept = lxml.html.fragment_fromstring(sanitize_html(summary, images=True), create_parent="div")
    images = kept.findall(".//img")
    assert len(images) == MAX_IMAGES
    assert all(img.get("src").startswith("https://i.example/") for img in images)
    assert (images[0].get("width"), images[0].get("height")) == (str(MAX_IMAGE_WIDTH), "280")
    assert all(int(img.get("width")) <= MAX_IMAGE_WIDTH for img in images)
    config = sample_config(tmp_path, digest="images = true")
    html, message = _message(config, Renderer(config), _digest(_entry(1, summary=summary)))
    srcs = [img.get("src") for img in lxml.html.fromstring(html).iter("img")]
    assert srcs == ["https://i.example/a.png", "https://i.example/0.png", "https://i.example/1.png"]
    text = message.get_body(("plain",))
    assert text is not None and "[big] [1]" in text.get_content()


def test_long_lines_are_encoded_so_no_line_exceeds_rfc_limits(config: Settings) -> None:
    summary = "<p>" + "x" * 5000 + " " + "é" * 3000 + "</p>"
    digest = _digest(_entry(1, title="SNN " + "y" * 1200, summary=summary))
    renderer = Renderer(config)
    out = compose_message(
        digest, renderer.render(digest), sender=config.sender, list_id="T <t.x>", unsubscribe=["mailto:a@b"]
    )
    lines = out.data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    body = out.data.partition(b"\r\n\r\n")[2]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


# --- properties -------------------------------------------------------------------------------------

TAGS = [
    "script", "iframe", "form", "img", "a", "p", "svg", "math", "style", "object", "embed", "input",
    "button", "meta", "link", "base", "textarea", "template", "noscript", "b", "pre", "ul", "li", "table",
]  # fmt: skip
ATTRS = ["onclick", "onerror", "onload", "href", "src", "style", "formaction", "xlink:href", "srcset"]
VALUES = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    "&#106;avascript:alert(1)",
    "&#x6A;avascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:x",
    "https://example.org/ok",
    "http://example.org/img.png",
    "//evil.example/x",
    "alert(1)",
    '"><script>alert(1)</script>',
]
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def feed_html(draw: st.DrawFn) -> str:
    """Tag soup built from dangerous parts, with arbitrary text in between."""
    out = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["open", "close", "text", "entity", "comment"]))
        if kind == "open":
            attrs = "".join(
                f' {draw(st.sampled_from(ATTRS))}="{draw(st.sampled_from(VALUES))}"'
                for _ in range(draw(st.integers(0, 3)))
            )
            out.append(f"<{draw(st.sampled_from(TAGS))}{attrs}>")
        elif kind == "close":
            out.append(f"</{draw(st.sampled_from(TAGS))}>")
        elif kind == "entity":
            out.append(draw(st.sampled_from(["&lt;script&gt;", "&amp;", "&#0;", "&nbsp;", "&#x3C;", "&"])))
        elif kind == "comment":
            out.append(f"<!-- {draw(_text)} -->")
        else:
            out.append(draw(_text))
    return "".join(out)


@pytest.fixture(scope="module")
def renderer(config: Settings) -> Renderer:
    return Renderer(config)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(summary=st.one_of(feed_html(), st.text(max_size=200)), title=st.one_of(feed_html(), _text))
def test_any_feed_html_yields_an_inert_email_identical_to_whole_inlining(
    config: Settings, renderer: Renderer, summary: str, title: str
) -> None:
    digest = _digest(_entry(1, title=title, summary=summary), _entry(2, summary="<p>plain SNN</p>"))
    html, _ = _message(config, renderer, digest)
    _assert_inert(html)
    assert html == renderer.render_whole(digest).html
    assert not renderer.whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    title=st.text(max_size=300),
    topic=st.text(max_size=100),
    name=st.one_of(st.none(), st.text(max_size=120)),
)
def test_any_title_or_name_parses_back_with_one_subject_and_the_same_recipient(
    config: Settings, renderer: Renderer, title: str, topic: str, name: str | None
) -> None:
    digest = _digest(_entry(1, title=title), name=name, topic_title=topic)
    html, message = _message(config, renderer, digest)
    assert len(message.get_all("Subject") or []) == 1
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@example.org"]
    assert "Bcc" not in message and "Cc" not in message
    assert html == renderer.render_whole(digest).html


@st.composite
def tag_soup_with_plain_text(draw: st.DrawFn) -> str:
    """Feed HTML whose text has no markup characters: whatever its tags, the text part must not."""
    words = st.text(alphabet="abcdefgh xyz", min_size=1, max_size=12)
    out = []
    for _ in range(draw(st.integers(1, 15))):
        tag = draw(st.sampled_from(TAGS))
        # (values without <, > or quotes: a mis-nested one would rightly become text)
        plain = [v for v in VALUES if not set(v) & set('<>"')]
        attrs = "".join(
            f' {draw(st.sampled_from(ATTRS))}="{draw(st.sampled_from(plain))}"'
            for _ in range(draw(st.integers(0, 2)))
        )
        pieces = [f"<{tag}{attrs}>", f"</{tag}>", draw(words), "<br>", "&amp;", draw(st.sampled_from(LINKS))]
        out.append(draw(st.sampled_from(pieces)))
    return "".join(out)


# Links of every kind, so that most examples have links in the text part to check.
LINKS = [
    '<a href="https://example.org/ok">',
    '<a href="mailto:ada@example.org">',
    '<a href="//evil.example/x">',
    '<a href="/relative">',
    '<a href="javascript:alert(1)">',
    '<a href="data:text/html,x">',
]


@settings(max_examples=300, deadline=None)
@given(tag_soup_with_plain_text())
def test_the_text_of_any_feed_html_has_nothing_of_html_left(fragment: str) -> None:
    from pipeline.render.summary import html_to_text

    text, links = html_to_text(sanitize_html(fragment))
    leftover = text.replace("&", "")  # a decoded &amp; is a plain "&"
    assert "<" not in leftover and ">" not in leftover and ";" not in leftover
    assert all(link.startswith(("https://", "http://", "mailto:")) for link in links)
