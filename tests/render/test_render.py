"""Rendering: golden files, pieces == whole email, the layout, templates and their errors.

Golden files live in tests/render/golden/. After a deliberate template change, regenerate them with

    DIGEST_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/render/test_render.py

and review the diff (``git diff tests/render/golden``) like any other change.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import lxml.html
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.errors import RenderError
from pipeline.models import Digest
from pipeline.render import TEMPLATES, Renderer, template_environment
from pipeline.render.inline import inline_css, piecewise_blockers

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("DIGEST_REGENERATE_GOLDEN") == "1"

EVE = """
[[subscribers]]
email = "eve@example.org"
name = "Eve \\"<b>\\" O'Neil & Ünïcödé"
topics = ["spiking", "diffusion"]
"""


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not REGENERATE:
            pytest.fail(f"{path} did not exist: written, check it in")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from the golden file: if the change is intended, run "
        "DIGEST_REGENERATE_GOLDEN=1 pytest tests/render/test_render.py "
        "and review git diff tests/render/golden"
    )


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Renderer, Digest]]:
    """Named sample digests, each with the renderer of its configuration."""
    out: dict[str, tuple[Renderer, Digest]] = {}
    base = sample_config(tmp_path_factory.mktemp("base"), extra=EVE)
    digests = sample_digests(base, items=HOSTILE_ITEMS)
    renderer = Renderer(base)
    renderer.prepare(digests.values())
    out["ada"] = (renderer, digests["ada@example.org"])
    out["grace"] = (renderer, digests["grace@example.org"])
    out["alan"] = (renderer, digests["alan@example.org"])  # no name, three topics
    out["hostile"] = (renderer, digests["eve@example.org"])
    cut = sample_config(tmp_path_factory.mktemp("cut"), digest="max_entries = 4\nsend_empty = true")
    cut_digests = sample_digests(cut, keep_empty=True)
    out["more"] = (Renderer(cut), cut_digests["alan@example.org"])  # "and N more"
    nothing = '\n[topics.nothing]\nkeywords = ["zzyzx"]\n\n[[subscribers]]\nemail = "nobody@example.org"\n'
    empty = sample_config(tmp_path_factory.mktemp("empty"), extra=nothing + 'topics = ["nothing"]\n')
    out["empty"] = (Renderer(empty), sample_digests(empty, keep_empty=True)["nobody@example.org"])
    images = sample_config(tmp_path_factory.mktemp("images"), digest="images = true", extra=EVE)
    out["images"] = (Renderer(images), sample_digests(images, items=HOSTILE_ITEMS)["eve@example.org"])
    return out


NAMES = ("ada", "grace", "alan", "hostile", "more", "empty", "images")


@pytest.mark.parametrize("name", NAMES)
def test_golden_files(samples: dict[str, tuple[Renderer, Digest]], name: str) -> None:
    renderer, digest = samples[name]
    rendered = renderer.render(digest)
    _golden(f"{name}.html", rendered.html)
    _golden(f"{name}.txt", f"Subject: {rendered.subject}\n\n{rendered.text}")


@pytest.mark.parametrize("name", NAMES)
def test_pieces_assemble_to_exactly_the_whole_email(
    samples: dict[str, tuple[Renderer, Digest]], name: str
) -> None:
    """Byte for byte: premailer once per piece per run == premailer on the whole email."""
    renderer, digest = samples[name]
    pieces = renderer.render(digest)
    whole = renderer.render_whole(digest)
    assert pieces.html == whole.html
    assert pieces.text == whole.text
    assert pieces.subject == whole.subject
    assert "".join(pieces.html_parts) == pieces.html
    assert "".join(pieces.text_parts) == pieces.text
    assert not renderer.whole


def test_premailer_runs_once_per_run_not_per_subscriber(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = list(sample_digests(settings).values())
    renderer = Renderer(settings)
    renderer.prepare(digests)
    # One catalogue for every piece; the header's contents line has a link per section, so each
    # further number of sections is another layout shape, inlined alone (its pieces are shared).
    calls = len({len(d.sections) for d in digests})
    assert calls == 2  # Ada and Grace have two sections, Alan three
    assert renderer.premailer_calls == calls
    for digest in digests * 3:
        renderer.render(digest)
    assert renderer.premailer_calls == calls
    renderer.prepare(digests)  # everything is inlined already: no call
    assert renderer.premailer_calls == calls


def test_sections_shared_by_subscribers_or_forgotten_render_the_same(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = list(sample_digests(settings, items=HOSTILE_ITEMS).values())
    expected = [Renderer(settings).render(d) for d in digests]  # a renderer per email
    shared = Renderer(settings)
    forgetful = Renderer(settings)
    forgetful.SECTIONS = 1  # every new section makes it start over
    for renderer in (shared, forgetful):
        renderer.prepare(digests)
        assert [renderer.render(d) for d in digests * 2] == expected * 2
    assert shared.section_count == len({(s.topic, s.matches) for d in digests for s in d.sections})


def test_render_without_prepare_prepares_that_digest(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = sample_digests(settings)
    renderer = Renderer(settings)
    ada = renderer.render(digests["ada@example.org"])
    assert renderer.premailer_calls == 1
    assert ada.html == Renderer(settings).render_whole(digests["ada@example.org"]).html


def test_later_batches_inline_only_new_pieces_without_the_media_queries(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = sample_digests(settings)
    renderer = Renderer(settings)
    renderer.prepare([digests["ada@example.org"]])
    renderer.prepare([digests["grace@example.org"]])  # other topics: a second, lighter call
    renderer.prepare([digests["ada@example.org"]])  # nothing new
    assert renderer.premailer_calls == 2
    whole = Renderer(settings)
    for digest in digests.values():
        assert renderer.render(digest).html == whole.render_whole(digest).html


# --- the layout -----------------------------------------------------------------------------------


def _tree(html: str) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(html)


def test_layout_header_sections_entries_footer(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["ada"]
    html = renderer.render(digest).html
    tree = _tree(html)
    container = tree.find_class("container")[0]
    assert container.get("width") == "600"  # Outlook reads the attribute; premailer must not rewrite it
    assert "max-width:600px" in container.get("style").replace(" ", "")
    header = tree.find_class("header")[0].text_content()
    assert "Test Digest" in header and "Monday 30 November 2026" in header and "for Ada" in header
    assert "Spiking neural networks (8)" in header and "Reinforcement learning (5)" in header
    assert [h.text_content().split()[0:2] for h in tree.find_class("topic-title")] == [
        ["Spiking", "neural"],
        ["Reinforcement", "learning"],
    ]
    entry = tree.find_class("entry")[0]
    link = entry.find_class("entry-title")[0].find("a")
    assert link.get("href").startswith("https://") and link.get("rel") == "noopener noreferrer"
    assert entry.find_class("byline")[0].text_content().endswith("2026")
    why = entry.find_class("why")[0].text_content()
    assert why.endswith("matched: spiking neural network, SNN, neuromorphic")
    footer = tree.find_class("footer")[0]
    assert "ada@example.org follows: Spiking neural networks, Reinforcement learning" in footer.text_content()
    unsubscribe = footer.find_class("unsubscribe")[0]
    assert unsubscribe.get("href").startswith("mailto:digest@") and "unsubscribe" in unsubscribe.get("href")
    preheader = tree.find_class("preheader")[0]
    assert "display:none" in preheader.get("style") and preheader.text_content().startswith("13 new:")


def test_media_queries_stay_in_style_with_important(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["ada"]
    html = renderer.render(digest).html
    style = _tree(html).find(".//style").text
    assert "@media (prefers-color-scheme: dark)" in style
    assert "@media only screen and (max-width: 620px)" in style
    assert "!important" in style
    assert "padding: 14px 24px" not in style  # plain rules were inlined, not left behind


def test_and_n_more(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["more"]
    rendered = renderer.render(digest)
    more = [e.text_content() for e in _tree(rendered.html).find_class("more")]
    assert more and all(re.match(r"… and \d+ more on ", m) for m in more)
    assert re.search(r"^  \.\.\. and \d+ more on ", rendered.text, flags=re.M)


def test_empty_digest_says_so(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["empty"]
    rendered = renderer.render(digest)
    assert "Nothing new matched your topics" in rendered.html
    assert "Nothing new matched your topics" in rendered.text
    assert rendered.subject == "[Test Digest] nothing new"


def test_hit_words_are_marked_in_titles_and_summaries(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["ada"]
    tree = _tree(renderer.render(digest).html)
    marks = [m.text_content().lower() for m in tree.iter("mark")]
    assert "spiking neural networks" in marks and "snns" in marks and "neuromorphic" in marks
    for mark in tree.iter("mark"):
        assert mark.getparent().tag in ("a", "h3", "p", "div", "b", "li", "i", "em", "strong")
    assert "<mark" not in renderer.render(digest).text


def test_marks_only_in_text_never_in_tags_or_attributes(tmp_path: Path) -> None:
    from pipeline.render.summary import highlight_html, sanitize_html

    html = sanitize_html('<p title="snn">An <a href="https://snn.example/snn">SNN paper</a> on SNNs</p>')
    marked = highlight_html(html, ["SNN"])
    assert marked == (  # once: "SNNs" is the same keyword
        '<p>An <a href="https://snn.example/snn" rel="noopener noreferrer">'
        "<mark>SNN</mark> paper</a> on SNNs</p>"
    )
    assert highlight_html(html, ["paper", "on"]) == (
        '<p>An <a href="https://snn.example/snn" rel="noopener noreferrer">SNN <mark>paper</mark></a> '
        "<mark>on</mark> SNNs</p>"
    )


def test_summary_cut_on_a_word_boundary_with_markup_closed(tmp_path: Path) -> None:
    from pipeline.render.summary import count_words, shorten_html

    fragment = "<p>one <b>two <i>three four</i> five</b> six</p><ul><li>seven</li></ul>"
    short, cut = shorten_html(fragment, 3)
    assert cut and short == "<p>one <b>two <i>three …</i></b></p>"
    assert count_words(short) == 4  # three words and the ellipsis
    assert shorten_html(fragment, 7) == (fragment, False)
    tree = lxml.html.fragment_fromstring(short, create_parent="div")
    assert lxml.html.tostring(tree, encoding="unicode") == f"<div>{short}</div>"


def test_summary_words_setting_cuts_html_and_text_alike(tmp_path: Path) -> None:
    settings = sample_config(tmp_path, digest="summary_words = 10")
    digest = sample_digests(settings)["ada@example.org"]
    rendered = Renderer(settings).render(digest)
    summaries = [s.text_content().split() for s in _tree(rendered.html).find_class("summary")]
    assert len(summaries) == digest.entry_count and any(s[-1] == "…" for s in summaries)
    for text in summaries:
        assert len(text) <= 11 and (len(text) < 10 or text[-1] == "…")
    assert "(SNNs) promise energy-efficient inference on neuromorphic hardware, …" in " ".join(
        rendered.text.split()
    )


def test_text_part_spells_out_links_and_has_no_html(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["hostile"]
    text = renderer.render(digest).text
    assert all(len(line) <= 78 or "://" in line or len(line.split()) <= 3 for line in text.splitlines())
    assert "the paper [1]" in text and "  [1] https://example.org/paper?utm_source=feed&id=1" in text
    assert "  https://arxiv.org/abs/2611.04121" in text  # entry links are spelled out
    assert "(no link)" in text  # the javascript: entry link is not
    summaries = text.split("== Spiking neural networks")[1]  # past the header and its names
    # literal text in the feed (a title, an escaped "&lt;b&gt;") may look like tags: leave it out
    summaries = summaries.replace("<script>alert(1)</script>", "").replace("<b> and &amp;", "")
    for tag in ("<p>", "<b>", "</a>", "<script", "<img", "&amp;amp;", "&nbsp;", "<iframe", "<form"):
        assert tag not in summaries
    assert "so does <b> and &amp;." in " ".join(text.split())  # entities decoded once


# --- templates ----------------------------------------------------------------------------------


def test_autoescape_is_on_for_every_html_template_and_undefined_is_strict() -> None:
    env = template_environment(None)
    assert env.undefined is jinja2.StrictUndefined
    assert callable(env.autoescape)
    for name in (*TEMPLATES, "style.css"):
        assert env.autoescape(name) is (not name.endswith(".txt.j2")), name
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nothing }}").render()


def _override(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "my-templates"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_override_folder_replaces_templates_by_name(tmp_path: Path) -> None:
    entry = (ROOT / "templates" / "_entry.html.j2").read_text()
    folder = _override(
        tmp_path,
        {
            "_entry.html.j2": entry.replace('<p class="byline">', '<p class="byline">By: '),
            "subject.txt.j2": "{{ total }} for {{ subscriber.email }}",
        },
    )
    settings = sample_config(tmp_path, digest=f'templates = "{folder}"')
    digest = sample_digests(settings)["ada@example.org"]
    renderer = Renderer(settings)
    rendered = renderer.render(digest)
    assert rendered.subject == "10 for ada@example.org"
    assert rendered.html.count("By: ") == digest.entry_count
    assert rendered.html == renderer.render_whole(digest).html
    assert not renderer.whole  # the override was checked once against the whole email, and agreed


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    folder = _override(tmp_path, {"_topic.html.j2": "<tr><td>\n{% for x in %}\n</td></tr>\n"})
    settings = sample_config(tmp_path, digest=f'templates = "{folder}"')
    with pytest.raises(RenderError, match=r"my-templates/_topic\.html\.j2:2: template syntax error"):
        Renderer(settings)


def test_template_runtime_error_names_file_and_line(tmp_path: Path) -> None:
    folder = _override(tmp_path, {"_entry.txt.j2": "* {{ entry.title }}\n{{ entry.no_such_field }}\n"})
    settings = sample_config(tmp_path, digest=f'templates = "{folder}"')
    digest = sample_digests(settings)["ada@example.org"]
    renderer = Renderer(settings)
    with pytest.raises(RenderError, match=r"my-templates/_entry\.txt\.j2:2: template error: .*no_such_field"):
        renderer.render(digest)


def test_feed_text_is_never_template_code(samples: dict[str, tuple[Renderer, Digest]]) -> None:
    renderer, digest = samples["hostile"]
    rendered = renderer.render(digest)
    for text in (rendered.html, rendered.text):
        assert "{{ 7 * 7 }}" in text and "{% raw %}" in text and "{{ secret }}" in text
        assert "{{ config }} {% for x in y %}{% endfor %}" in text
        assert "49" not in text.split("{{ 7 * 7 }}")[0][-50:]


def test_sibling_selectors_make_the_renderer_inline_whole_emails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    css = (ROOT / "templates" / "style.css").read_text()
    folder = _override(tmp_path, {"style.css": css + "\n.entry + .entry { border-top: 1px solid red; }\n"})
    settings = sample_config(tmp_path, digest=f'templates = "{folder}"')
    digests = sample_digests(settings)
    renderer = Renderer(settings)
    with caplog.at_level(logging.WARNING, logger="digest"):
        renderer.prepare(digests.values())
    assert renderer.whole
    assert "depend on siblings" in caplog.text and ".entry + .entry" in caplog.text
    ada = digests["ada@example.org"]
    assert renderer.render(ada).html == Renderer(settings).render_whole(ada).html


@pytest.mark.parametrize(
    ("selector", "blocks"),
    [
        (".a + .b", True),
        (".a ~ .b", True),
        ("td:first-child", True),
        ("li:last-child", True),
        ("tr:nth-child(2n)", True),
        ("a[href^=mailto]", True),
        (".summary p", False),
        (".container > tr", False),
        ("a:hover", False),  # never inlined: premailer leaves it in <style>
    ],
)
def test_piecewise_blockers(selector: str, blocks: bool) -> None:
    document = f"<html><head><style>{selector} {{ color: red }}</style></head><body></body></html>"
    assert bool(piecewise_blockers(document)) is blocks


def test_inline_css_keeps_width_attributes_and_is_offline() -> None:
    html = (
        "<html><head><style>.c { width: 100%; max-width: 600px; background-color: #fff }</style>"
        '<link rel="stylesheet" href="https://example.com/x.css"></head>'
        '<body><table class="c" width="600"><tr><td>x</td></tr></table></body></html>'
    )
    out = inline_css(html)
    assert 'width="600"' in out and 'bgcolor="#fff' in out and "max-width:600px" in out


def test_preview_open_shows_the_file_in_the_browser(tmp_path: Path) -> None:
    """``digest preview --open`` hands the file's URL to the browser ($BROWSER, as webbrowser reads it)."""
    config = sample_config(tmp_path).path
    seen = tmp_path / "browser-was-given"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    browser.chmod(0o755)
    out = tmp_path / "ada.html"
    command = [sys.executable, "-m", "pipeline.cli", "--config", str(config), "preview"]
    result = subprocess.run(
        [*command, "--subscriber", "ada@example.org", "--output", str(out), "--open"],
        env={**os.environ, "BROWSER": str(browser)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert seen.read_text().strip() == out.resolve().as_uri()
    assert "Spiking neural networks" in out.read_text()


def _colours(dark: bool) -> dict[str, str]:
    """Each rule's color and background-color in the built-in stylesheet, dark overrides applied."""
    import cssutils

    css = (ROOT / "templates" / "style.css").read_text()
    sheet = cssutils.parseString(css, validate=False)
    found: dict[str, str] = {}

    def take(rules: object) -> None:
        for rule in rules:  # type: ignore[attr-defined]
            if rule.type == rule.STYLE_RULE:
                for selector in rule.selectorText.split(","):
                    for prop in ("color", "background-color", "border-left-color"):
                        value = rule.style.getPropertyValue(prop)
                        if value:
                            found[f"{selector.strip()} {prop}"] = value

    take(sheet)
    if dark:
        for rule in sheet:
            if rule.type == rule.MEDIA_RULE and "prefers-color-scheme: dark" in rule.media.mediaText:
                take(rule.cssRules)
    return found


def _contrast(one: str, two: str) -> float:
    def luminance(colour: str) -> float:
        colour = colour.lstrip("#")
        if len(colour) == 3:
            colour = "".join(c * 2 for c in colour)
        channels = [int(colour[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(one), luminance(two)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_text_contrast_is_readable_in_both_colour_schemes(dark: bool) -> None:
    """WCAG contrast: 7:1 (AAA) for text on the card, 4.5:1 (AA) for links and highlights."""
    c = _colours(dark)
    card = c[".container background-color"]
    for text in (".digest-title", ".meta", ".counts", ".topic-title", ".entry-title", ".byline", ".summary"):
        assert _contrast(c[f"{text} color"], card) >= 7, (text, c[f"{text} color"], card)
    for text in (".topic-count", ".why", ".more", ".empty"):
        assert _contrast(c[f"{text} color"], card) >= 7, text
    for link in (".entry-title a", ".summary a", ".counts a", ".why a"):
        assert _contrast(c[f"{link} color"], card) >= 4.5, link
    assert _contrast(c[".footer color"], c[".footer background-color"]) >= 7
    assert _contrast(c[".footer a color"], c[".footer background-color"]) >= 4.5
    assert _contrast(c["mark color"], c["mark background-color"]) >= 7


fragments = st.lists(
    st.sampled_from(
        [
            '<p class="a">',
            "</p>",
            '<a href="https://x.example/?a=1&amp;b=2" title="t &amp; u">',
            "</a>",
            "<br>",
            "<pre>",
            "</pre>",
            "<title>T</title>",
            "<!-- c -->",
            "\n",
            "  ",
            "text &amp; more",
            "&nbsp;x",
            "a < b",
            "Ünïcödé · …",
            '<img alt="x" src="https://i.example/a.png">',
        ]
    ),
    max_size=25,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(fragments)
def test_match_shape_agrees_with_shape_of(fragment: str) -> None:
    from pipeline.render.inline import match_shape, shape_of

    shape, values = shape_of(fragment)
    assert match_shape(fragment, shape) == values
    rebuilt = "".join(
        literal + (value.replace("&", "&amp;").replace("<", "&lt;") if i < len(values) else "")
        for i, (literal, value) in enumerate(zip(shape.literals, (*values, ""), strict=True))
    )
    assert shape_of(rebuilt)[0] == shape  # the same text, escaped anew, has the same shape
