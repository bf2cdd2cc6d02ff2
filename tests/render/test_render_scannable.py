"""A scannable email: contents line, short summaries, paper links, quiet highlights, whole feed names.

Each point of the layout that keeps a digest short and easy to scan, checked on the rendered
sample digests (the real pipeline on tests/data) and on the functions behind it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import lxml.html
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.errors import ConfigError
from pipeline.match import same_word, words
from pipeline.models import Digest, Entry, Match, Section
from pipeline.render import Renderer
from pipeline.render.summary import (
    first_sentences,
    highlight_html,
    sanitize_html,
    sentence_ends,
    tokens,
)
from pipeline.render.views import MAX_UNBROKEN_FEED, arxiv_links, section_anchor

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
EVE = '\n[[subscribers]]\nemail = "eve@example.org"\nname = "Eve"\ntopics = ["spiking", "diffusion"]\n'


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Digest, str, str]]:
    """Every sample subscriber's digest, with its HTML and text parts, by name."""
    config = sample_config(tmp_path_factory.mktemp("scannable"), extra=EVE)
    digests = sample_digests(config, items=HOSTILE_ITEMS)
    renderer = Renderer(config)
    renderer.prepare(digests.values())
    out = {}
    for address, digest in digests.items():
        email = renderer.render(digest)
        out[address.split("@")[0]] = (digest, email.html, email.text)
    return out


def _tree(html: str) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(html)


# --- sentences ------------------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    ends = sentence_ends(text)
    starts = [0, *ends]
    found = [text[a:b].strip() for a, b in zip(starts, ends, strict=False)]
    rest = text[ends[-1] if ends else 0 :].strip()
    return found + ([rest] if rest else [])


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two. Three.", ["One.", "Two.", "Three."]),
        ("Is it? Yes! Good.", ["Is it?", "Yes!", "Good."]),
        ("We use GANs, e.g. StyleGAN. Then more.", ["We use GANs, e.g. StyleGAN.", "Then more."]),
        ("Shown by Smith et al. Theirs wins. Ok.", ["Shown by Smith et al. Theirs wins.", "Ok."]),
        ("Smith et al. (2020) showed it. We agree.", ["Smith et al. (2020) showed it.", "We agree."]),
        ("One model, i.e. Ours. Next.", ["One model, i.e. Ours.", "Next."]),
        ("See Fig. 2 and Eq. 3 for details. Done.", ["See Fig. 2 and Eq. 3 for details.", "Done."]),
        ("Ours beats it (cf. Tab. 1). Next.", ["Ours beats it (cf. Tab. 1).", "Next."]),
        ("Accuracy rose by 0.4 points to 92.8%. We also run 3.5x faster.",
         ["Accuracy rose by 0.4 points to 92.8%.", "We also run 3.5x faster."]),
        ("It gains 3.5. Then it stops.", ["It gains 3.5.", "Then it stops."]),
        ("J. Smith and A. B. Jones wrote it. Fine.", ["J. Smith and A. B. Jones wrote it.", "Fine."]),
        ("The U.S. Army funded it. Fine.", ["The U.S. Army funded it.", "Fine."]),
        ("Methods vs. baselines. Fine.", ["Methods vs. baselines.", "Fine."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("(See Sec. 4.) Next one.", ["(See Sec. 4.)", "Next one."]),
        ("A stop. then lower case goes on. End.", ["A stop. then lower case goes on.", "End."]),
        ("3D worlds are rare. 2024 was a year. End", ["3D worlds are rare.", "2024 was a year.", "End"]),
        ("No stop at all", ["No stop at all"]),
        ("Wait... What now?", ["Wait...", "What now?"]),
        ("Ends with a stop.", ["Ends with a stop."]),
        ("", []),
    ],
)  # fmt: skip
def test_sentence_splitting(text: str, sentences: list[str]) -> None:
    assert _sentences(text) == sentences


@pytest.mark.parametrize(
    ("fragment", "count", "expected", "cut"),
    [
        ("<p>One <em>is here.</em> Two is <b>there. Three</b> is gone.</p>", 1,
         "<p>One <em>is here.</em></p>", True),
        (
            "<p>One <em>is here.</em> Two is <b>there. Three</b> is gone.</p>",
            2,
            "<p>One <em>is here.</em> Two is <b>there.</b></p>",
            True,
        ),
        ("<p>One.</p><p>Two.</p><p>Three.</p>", 2, "<p>One.</p><p>Two.</p>", True),
        ("<p>One.</p><p>Two.</p>", 2, "<p>One.</p><p>Two.</p>", False),
        ("<p>One. Two.</p>\n", 2, "<p>One. Two.</p>\n", False),  # nothing but space after: not cut
        # a paragraph or list item ends a sentence, even without a stop
        ("<p>We contribute:</p><ul><li>a method</li><li>a dataset</li></ul>", 2,
         "<p>We contribute:</p><ul><li>a method</li></ul>", True),
        ('<p>See <a href="https://x.example/a?b=1&amp;c=2">the paper. It</a> is good.</p>', 1,
         '<p>See <a href="https://x.example/a?b=1&amp;c=2">the paper.</a></p>', True),
        ("<p>Fish &amp; chips. Tea &lt;hot&gt;.</p>", 1, "<p>Fish &amp; chips.</p>", True),
        ("<p>One.<br>Two. Three.</p>", 2, "<p>One.<br>Two.</p>", True),
    ],
)  # fmt: skip
def test_first_sentences_cut_html_without_breaking_tags(
    fragment: str, count: int, expected: str, cut: bool
) -> None:
    assert first_sentences(fragment, count) == (expected, cut)


_pieces = st.sampled_from(
    [
        "<p>", "</p>", "<b>", "</b>", "<em>", "</em>", "<ul><li>", "</li><li>", "</li></ul>", "<br>",
        '<a href="https://x.example/?a=1&amp;b=2">', "</a>", "<blockquote>", "</blockquote>",
        "One. ", "e.g. this ", "Fig. 2 ", "0.4 points. ", "Et al. ", "Why? ", "&amp; ", "&lt;x&gt; ",
        "Word", " ", "\n",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=30).map("".join), st.integers(1, 4))
def test_first_sentences_are_well_formed_and_a_prefix_of_the_text(fragment: str, count: int) -> None:
    clean = sanitize_html(fragment)
    short, cut = first_sentences(clean, count)
    # well formed: every element that opens closes, in order, and no tag is cut
    stack: list[str] = []
    for token in tokens(short):
        if isinstance(token, str):
            assert "<" not in token and ">" not in token
        elif token.name not in ("br", "img"):
            if token.end:
                assert stack and stack.pop() == token.name, short
            else:
                stack.append(token.name)
    assert stack == [], short

    def text(fragment: str) -> str:
        return " ".join(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content().split())

    assert text(clean).startswith(text(short))
    assert cut == (short != clean)
    if not cut:
        assert short == clean


def test_summaries_are_their_first_two_sentences_by_default(
    rendered: dict[str, tuple[Digest, str, str]],
) -> None:
    _, html, text = rendered["alan"]
    first = _tree(html).find_class("summary")[0].text_content()
    assert first == (
        "Offline reinforcement learning (RL) learns policies from fixed datasets, where overestimation of "
        "out-of-distribution actions is the main failure mode. We introduce conservative value ensembles, "
        "which penalise the disagreement of an ensemble of Q-functions only on actions that the behaviour "
        "policy rarely takes."
    )
    assert "The method adds a single hyperparameter" not in html and "single hyperparameter" not in text


def test_summary_words_mode_and_sentence_count(tmp_path: Path) -> None:
    def first_summary(digest_settings: str, folder: str) -> str:
        config = sample_config(tmp_path / folder, digest=digest_settings)
        digest = sample_digests(config)["alan@example.org"]
        return str(_tree(Renderer(config).render(digest).html).find_class("summary")[0].text_content())

    (tmp_path / "words").mkdir()
    (tmp_path / "one").mkdir()
    (tmp_path / "capped").mkdir()
    words_mode = first_summary('summary = "words"', "words")
    assert words_mode.endswith("as dataset coverage grows.")  # the whole abstract: under 120 words
    one = first_summary("summary_sentences = 1", "one")
    assert one.endswith("is the main failure mode.") and one.count(". ") == 0
    capped = first_summary("summary_sentences = 10\nsummary_words = 12", "capped")
    assert len(capped.split()) == 13 and capped.endswith("…")  # summary_words is a hard cap


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('summary = "paragraphs"', "digest.summary"),
        ("summary_sentences = 0", "digest.summary_sentences"),
        ("summary_sentences = 11", "digest.summary_sentences"),
    ],
)
def test_summary_settings_are_checked(tmp_path: Path, line: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        sample_config(tmp_path, digest=line)


# --- highlights -------------------------------------------------------------------------------------


def _marks(fragment: str) -> list[str]:
    return [
        m.text_content() for m in lxml.html.fragment_fromstring(fragment, create_parent="div").iter("mark")
    ]


@pytest.mark.parametrize(
    ("summary", "hits", "marked"),
    [
        (
            "<p>Diffusion models are popular. A diffusion model is slow. DIFFUSION MODELS again.</p>",
            ("diffusion model",),
            ["Diffusion models"],
        ),
        ("<p>Bandits are hard; a bandit is a bandit. Contextual BANDITS.</p>", ("bandit",), ["Bandits"]),
        ("<p>An RL agent, RLs and rl.</p>", ("RL", "RLs"), ["RL"]),  # two spellings, one keyword
        ("<p>A bandit for RL, then bandits and RL.</p>", ("RL", "bandit"), ["bandit", "RL"]),
        ("<p>Policies and a policy.</p>", ("policy",), ["Policies"]),
        ("<p>Spiking <b>neural networks</b>, spiking neural network.</p>", ("spiking neural network",),
         ["Spiking ", "neural networks"]),  # a phrase across inline markup: its pieces, once
        ("<p>Nothing here.</p>", ("bandit",), []),
        ("<p>Only in the title.</p>", ("title:diffusion",), []),
    ],
)  # fmt: skip
def test_each_keyword_is_marked_once_where_it_first_occurs(
    summary: str, hits: tuple[str, ...], marked: list[str]
) -> None:
    assert _marks(highlight_html(sanitize_html(summary), hits)) == marked


def _same_keyword(a: str, b: str) -> bool:
    one, two = words(a), words(b)
    return len(one) == len(two) and all(same_word(x, y) for x, y in zip(one, two, strict=True))


@pytest.mark.parametrize("name", ["ada", "grace", "alan", "eve"])
def test_no_summary_marks_a_keyword_twice(rendered: dict[str, tuple[Digest, str, str]], name: str) -> None:
    _, html, _ = rendered[name]
    summaries = _tree(html).find_class("summary")
    assert summaries
    for summary in summaries:
        marks = [m.text_content() for m in summary.iter("mark")]
        assert len(marks) <= 4
        for i, a in enumerate(marks):
            for b in marks[i + 1 :]:
                assert not _same_keyword(a, b), (a, b, summary.text_content()[:80])


def test_title_highlights_are_bold_and_underlined_never_a_background(
    rendered: dict[str, tuple[Digest, str, str]],
) -> None:
    _, html, _ = rendered["alan"]
    tree = _tree(html)
    titles = tree.find_class("entry-title")
    hits = [b for title in titles for b in title.iter("b") if "hit" in (b.get("class") or "")]
    assert hits, "the sample titles hold hit words"
    assert not [m for title in titles for m in title.iter("mark")]
    for hit in hits:
        style = hit.get("style").replace(" ", "")
        assert hit.tag == "b" and "border-bottom:2pxsolid" in style  # bold, and underlined
        assert "background" not in style and "color:" not in style.replace("decoration-color:", "")
        assert hit.get("bgcolor") is None
        assert hit.getparent().tag == "a" or "entry-title" in (hit.getparent().get("class") or "")
    # the stylesheet gives .hit no background in either colour scheme
    css = (ROOT / "templates" / "style.css").read_text()
    for rule in re.findall(r"\.hit\s*\{([^}]*)\}", css):
        assert "background" not in rule and not re.search(r"(?<![-\w])color\s*:", rule)


def test_summary_highlights_keep_the_mark(rendered: dict[str, tuple[Digest, str, str]]) -> None:
    _, html, _ = rendered["ada"]
    summary = _tree(html).find_class("summary")[0]
    assert [m.text_content() for m in summary.iter("mark")] == [
        "Spiking neural networks",
        "SNNs",
        "neuromorphic",
    ]


# --- the matched line and the paper links -------------------------------------------------------------


def test_matched_line_names_the_hit_keywords_not_the_topic(
    rendered: dict[str, tuple[Digest, str, str]],
) -> None:
    digest, html, text = rendered["alan"]
    lines = [p.text_content() for p in _tree(html).find_class("why")]
    matches = [m for section in digest.sections for m in section.matches]
    assert len(lines) == len(matches)
    for line, match in zip(lines, matches, strict=True):
        assert line.split("matched: ")[1] == ", ".join(match.hits)
    assert "Why:" not in html and "Why:" not in text
    assert "  matched: reinforcement learning, RL\n" in text


def test_arxiv_entries_link_their_abstract_and_pdf_and_others_do_not(
    rendered: dict[str, tuple[Digest, str, str]],
) -> None:
    digest, html, text = rendered["alan"]
    matches = [m for section in digest.sections for m in section.matches]
    entries = _tree(html).find_class("entry")
    assert len(entries) == len(matches)
    seen = {True: 0, False: 0}
    for element, match in zip(entries, matches, strict=True):
        arxiv = match.entry.arxiv_id
        links = {a.text_content(): a for a in element.find_class("why")[0].iter("a")}
        seen[arxiv is not None] += 1
        if arxiv is None:
            assert links == {}
            continue
        assert set(links) == {"abstract", "PDF"}
        assert links["abstract"].get("href") == f"https://arxiv.org/abs/{arxiv}"
        assert links["PDF"].get("href") == f"https://arxiv.org/pdf/{arxiv}"
        assert all(a.get("rel") == "noopener noreferrer" for a in links.values())
        assert f"  PDF: https://arxiv.org/pdf/{arxiv}\n" in text
        title_link = element.find_class("entry-title")[0].find("a").get("href")
        assert title_link == match.entry.link  # the entry's own link stays the title's
        if title_link != f"https://arxiv.org/abs/{arxiv}":
            assert f"{title_link}\n  abstract: https://arxiv.org/abs/{arxiv}\n" in text
    assert seen[True] and seen[False]  # the sample has both kinds
    assert text.count("  PDF: ") == seen[True]


@pytest.mark.parametrize(
    ("arxiv_id", "links"),
    [
        ("2611.04121", ("https://arxiv.org/abs/2611.04121", "https://arxiv.org/pdf/2611.04121")),
        ("hep-th/9901001", ("https://arxiv.org/abs/hep-th/9901001", "https://arxiv.org/pdf/hep-th/9901001")),
        (
            "math.GT/0309136",
            ("https://arxiv.org/abs/math.GT/0309136", "https://arxiv.org/pdf/math.GT/0309136"),
        ),
        (None, (None, None)),
        ("", (None, None)),
        ('2611.04121" onmouseover="x', (None, None)),
        ("javascript:alert(1)", (None, None)),
        ("../../etc/passwd", (None, None)),
        ("2611.04121 v2", (None, None)),
    ],
)
def test_arxiv_links_only_for_an_arxiv_id(arxiv_id: str | None, links: tuple[str | None, str | None]) -> None:
    assert arxiv_links(arxiv_id) == links


# --- the contents line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ada", "grace", "alan", "eve"])
def test_contents_links_point_at_the_section_ids(
    rendered: dict[str, tuple[Digest, str, str]], name: str
) -> None:
    digest, html, _ = rendered[name]
    tree = _tree(html)
    contents = tree.find_class("counts")[0].findall(".//a")
    sections = tree.find_class("topic-title")
    assert len(contents) == len(sections) == len(digest.sections)
    ids = [element.get("id") for element in tree.iter() if element.get("id")]
    assert len(ids) == len(set(ids))
    for link, heading, section in zip(contents, sections, digest.sections, strict=True):
        assert link.get("href") == f"#{heading.get('id')}"
        assert re.fullmatch(r"[a-z0-9-]+", heading.get("id"))
        count = len(section.matches) + section.more
        assert link.text_content() == f"{section.title} ({count})"
        assert heading.text_content() == f"{section.title} {count}"


def test_section_anchors_are_safe_and_distinct() -> None:
    names = ["rl", "RL", "Rl", "a.b", "a_b", "a-b", "a--b", "-", "x" * 64, "2024", "ünï"]
    anchors = [section_anchor(name) for name in names]
    assert len(set(anchors)) == len(names)
    assert all(re.fullmatch(r"topic-[a-z0-9]+(?:-[a-z0-9]+)*", a) for a in anchors), anchors
    assert section_anchor("rl") == "topic-rl" and section_anchor("a-b") == "topic-a-b"
    assert section_anchor("RL") == section_anchor("RL")  # the same in every email


# --- the byline -------------------------------------------------------------------------------------


def test_each_feed_name_is_kept_on_one_line_and_the_names_may_wrap_between(
    rendered: dict[str, tuple[Digest, str, str]],
) -> None:
    _, html, _ = rendered["alan"]
    bylines = _tree(html).find_class("byline")
    two = next(b for b in bylines if len(b.find_class("feed")) == 2)
    feeds = two.find_class("feed")
    assert [f.text_content() for f in feeds] == ["arxiv-cs", "hf-papers"]
    assert feeds[0].tail == ", "  # a plain space between names: a line may break there
    for byline in bylines:
        spans = byline.find_class("feed") + byline.find_class("date")
        assert spans
        for span in spans:
            assert "white-space:nowrap" in span.get("style").replace(" ", "")


def test_a_very_long_feed_name_may_break_rather_than_widen_the_email(tmp_path: Path) -> None:
    config = sample_config(tmp_path)
    long_name, short = "f" * (MAX_UNBROKEN_FEED + 1), "f" * MAX_UNBROKEN_FEED
    entry = Entry(
        id=1,
        title="Spiking neural networks",
        link="https://example.org/1",
        summary_html="<p>SNN.</p>",
        authors=("A. Author",),
        categories=(),
        published=NOW,
        first_seen=NOW,
        feeds=(short, long_name),
    )
    digest = Digest(
        subscriber="ada@example.org",
        name=None,
        sections=(Section("spiking", "Spiking", (Match(entry, "spiking", 3, ("SNN",)),)),),
        topics=("Spiking",),
        created_at=NOW,
        message_id="<x@example.net>",
    )
    byline = _tree(Renderer(config).render(digest).html).find_class("byline")[0]
    assert [f.text_content() for f in byline.find_class("feed")] == [short]
    assert long_name in byline.text_content()
