"""A reader's archive and Atom feed, end to end: real ``digest fetch`` / ``send`` into
aiosmtpd, then a real ``digest serve`` process driven over HTTP. The pages are compared with
the emails that were sent (less the links that act for the reader, whose tokens appear in no
page nor the feed), hostile feed text is followed to the page and the feed, the feed is
checked with feedparser and against what RFC 4287 requires, and pruning is done by the real
store on the real file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import feedparser
import lxml.html
import pytest
from conftest import SmtpServer, body_html, body_text, smtp_section, state_db
from web_server import WEB_SECRET, digest

from pipeline.store import Store
from pipeline.web.tokens import Signer

ADA, BOB = "ada@example.org", "bob@example.org"
ATOM = "{http://www.w3.org/2005/Atom}"

CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"
base_url = "{base_url}"

[[feeds]]
name = "lab"
url = "{feed}"

[topics.spiking]
title = "Spiking neural networks"
keywords = ["spiking neural network", "SNN"]

[topics.rl]
title = "Reinforcement learning"
keywords = ["reinforcement learning"]

[[subscribers]]
email = "ada@example.org"
name = "Ada"
topics = ["spiking"]

[[subscribers]]
email = "bob@example.org"
topics = ["rl"]

{smtp}
"""

KEPT = ("e0", "Spiking neural networks that stay", "https://lab.example.org/stay", "Stays listed. SNN.")
LEFT = ("e1", "Spiking neural networks that leave", "https://lab.example.org/leave", "Leaves the feed. SNN.")
HOSTILE_TITLE = "Spiking neural network {{ 7 * 7 }} <script>alert(1)</script> {% raw %} & \"quotes\""
HOSTILE = (
    "e2",
    HOSTILE_TITLE.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
    "javascript:alert(document.cookie)",
    "&lt;p&gt;SNN &lt;script&gt;alert('x')&lt;/script&gt;"
    "&lt;a href=\"javascript:alert(1)\"&gt;click&lt;/a&gt; {{ config }}"
    " &lt;b onclick=\"steal()\"&gt;bold&lt;/b&gt;&lt;/p&gt;",
)
PLAIN = ("e3", "Spiking neural networks, plainly", "https://lab.example.org/plain", "A plain SNN post.")
LATER = ("e4", "Spiking neural networks, later", "https://lab.example.org/later", "A later SNN post.")
AGENTS = ("e5", "Reinforcement learning agents", "https://lab.example.org/agents", "For Bob.")


def item(guid: str, title: str, link: str, text: str) -> str:
    return (
        f"<item><guid>{guid}</guid><title>{title}</title><link>{link}</link>"
        f"<description>{text}</description><pubDate>Fri, 04 Dec 2026 10:00:00 +0000</pubDate></item>"
    )


def write_feed(tmp_path: Path, *items: tuple[str, str, str, str]) -> None:
    (tmp_path / "lab.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>Lab</title>'
        "<link>https://lab.example.org/</link><description>x</description>"
        + "".join(item(*i) for i in items)
        + "</channel></rss>\n",
        encoding="utf-8",
    )


def run(path: Path, *args: str) -> None:
    done = digest(path, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def archive(tmp_path: Path, smtp_server: SmtpServer, web_server: Any) -> tuple[Path, SmtpServer, Any]:
    """Two digests sent to Ada (four entries, two of them first fetched earlier, one of those
    gone from the feed since; then one), one to Bob."""
    write_feed(tmp_path, KEPT, LEFT)
    path = tmp_path / "digest.toml"
    smtp = smtp_section(smtp_server)
    text = CONFIG.format(base_url=web_server.base_url, feed=tmp_path / "lab.xml", smtp=smtp)
    path.write_text(text, encoding="utf-8")
    run(path, "fetch")
    write_feed(tmp_path, KEPT, HOSTILE, PLAIN, AGENTS)
    run(path, "send")
    write_feed(tmp_path, KEPT, HOSTILE, PLAIN, AGENTS, LATER)
    run(path, "send")
    assert len(smtp_server.handler.to(ADA)) == 2 and len(smtp_server.handler.to(BOB)) == 1
    return path, smtp_server, web_server


def archive_link(message: Any) -> str:
    """The footer's link to the reader's past digests (in both parts)."""
    (link,) = [a.get("href") for a in lxml.html.fromstring(body_html(message)).find_class("archive")]
    assert link in body_text(message).split()
    return str(link)


def without_note(page: str) -> str:
    return re.sub(r'<div class="archive-note".*?</div>\n?', "", page, count=1, flags=re.S)


# The links that act for the reader (votes beside entries; preferences, archive, unsubscribe in
# the footer), one line each, and the line an archived copy has instead.
READER_LINKS = re.compile(
    r'<p class="vote"[^>]*>.*?</p>\n'
    r'|<p[^>]*><a class="(?:preferences|archive|unsubscribe)"[^>]*>.*?</a></p>\n'
)
ARCHIVED = re.compile(r'<p class="archived"[^>]*>This archived copy leaves out the links[^<]*</p>\n')


def acting_tokens(message: Any) -> set[str]:
    """The tokens of every link of a sent email that acts for its reader (unsubscribe,
    preferences, votes: in both parts and in List-Unsubscribe)."""
    text = body_html(message) + body_text(message) + str(message["List-Unsubscribe"])
    found = set(re.findall(r"/(?:u|p|v)/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", text))
    assert found
    return found


def unix(text: str) -> str:
    return text.replace("\r\n", "\n")


def assert_no_active_content(html: str) -> None:
    tree = lxml.html.fromstring(html)
    assert not list(tree.iter("script"))
    for element in tree.iter():
        assert not any(name.startswith("on") for name in element.attrib), element.attrib
        for name in ("href", "src", "action"):
            assert not (element.get(name) or "").strip().lower().startswith("javascript:")


def prune_between_fetches(tmp_path: Path) -> None:
    """Prune as the store does ``retain`` (90 days) after a moment between the first fetch
    and the send: the entries first seen before it lose their text, and the one no feed lists
    any more is forgotten; the digests (made after it) stay."""
    with state_db(tmp_path) as db:
        seen = sorted(
            datetime.fromisoformat(v).replace(tzinfo=UTC)
            for (v,) in db.execute("select distinct first_seen from entries")
        )
    cutoff = seen[0] + (seen[1] - seen[0]) / 2
    with Store(f"sqlite:///{tmp_path / 'state' / 'digest.db'}") as store:
        hollowed, forgotten, dropped = store.prune(cutoff + timedelta(days=90), timedelta(days=90))
    assert (hollowed, forgotten, dropped) == (2, 1, 0)


def test_the_archive_lists_each_digest_and_shows_it_as_it_was_emailed(
    tmp_path: Path, archive: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = archive
    first, second = smtp.handler.to(ADA)
    link = archive_link(first)
    assert link == archive_link(second) and link.startswith(servers.base_url + "/archive/")
    served = servers.start(path)
    index = served.client.get(link)
    assert index.status_code == 200
    tree = lxml.html.fromstring(index.text)
    pages = [a.get("href") for a in tree.find_class("archive")[0].iter("a")]
    assert len(pages) == 2 and all(re.fullmatch(re.escape(link) + r"/\d+", p) for p in pages)
    subjects = [" ".join(a.text_content().split()) for a in tree.find_class("archive")[0].iter("a")]
    assert subjects == [str(second["Subject"]), str(first["Subject"])]  # newest first
    (feed,) = [a.get("href") for a in tree.iter("a") if (a.get("href") or "").endswith(".atom")]
    assert feed.startswith(servers.base_url + "/feed/")

    for url, message in zip(pages, (second, first), strict=True):
        page = served.client.get(url)
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "style-src 'unsafe-inline'" in policy and "script" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert "archive-note" in page.text and "All your past digests" in page.text
        # The very email, re-rendered from the outbox's record of it, byte for byte, but for the
        # links that act for the reader: a line says they are left out, and none of their
        # tokens is anywhere in the page (a feed reader that holds the feed can open it).
        shown, sent = without_note(page.text), unix(body_html(message))
        assert len(ARCHIVED.findall(shown)) == 1 and len(READER_LINKS.findall(shown)) == 0
        assert len(READER_LINKS.findall(sent)) == 3 + sent.count('class="vote"')
        assert ARCHIVED.sub("", shown) == READER_LINKS.sub("", sent)
        assert not [t for t in acting_tokens(message) if t in page.text or t.split(".")[1] in page.text]
        assert_no_active_content(page.text)
    hostile = lxml.html.fromstring(served.client.get(pages[1]).text)
    titles = [" ".join(e.text_content().split()) for e in hostile.find_class("entry-title")]
    assert HOSTILE_TITLE in titles  # as text: nothing ran, nothing was read as a template
    assert "49" not in " ".join(titles)
    assert sorted(titles) == sorted([KEPT[1], LEFT[1], HOSTILE_TITLE, PLAIN[1]])


def test_no_token_of_another_purpose_is_in_the_archive_or_the_feed(
    tmp_path: Path, archive: tuple[Path, SmtpServer, Any]
) -> None:
    """Whoever holds the feed's address (a feed reader, a service) reads the archive; neither
    may carry a link or token that unsubscribes the reader, changes their choices or votes."""
    path, smtp, servers = archive
    served = servers.start(path)
    sent = smtp.handler.to(ADA)
    keys = Signer(WEB_SECRET.encode())
    tokens = set().union(*(acting_tokens(m) for m in sent))
    tokens |= {keys.token(purpose, ADA) for purpose in ("unsubscribe", "preferences", "vote")}
    macs = {t.split(".")[1] for t in tokens}
    index_url = archive_link(sent[0])
    index = served.client.get(index_url).text
    tree = lxml.html.fromstring(index)
    (feed_url,) = [a.get("href") for a in tree.iter("a") if (a.get("href") or "").endswith(".atom")]
    feed = served.client.get(feed_url).text
    pages = [a.get("href") for a in tree.find_class("archive")[0].iter("a")]
    pages += [e.link for e in feedparser.parse(feed).entries]  # where the feed's entries lead
    assert len(pages) == 4
    shown = [index, feed, *(served.client.get(url).text for url in pages)]
    for text in shown:
        assert not [m for m in macs if m in text]
        assert not re.search(r"/(?:u|p|v)/[A-Za-z0-9_-]+\.", text)
        assert "Unsubscribe</a>" not in text and "like this" not in text
    assert all("This archived copy leaves out the links" in text for text in shown[2:])


def test_the_archive_says_what_it_no_longer_keeps(
    tmp_path: Path, archive: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = archive
    first, _ = smtp.handler.to(ADA)
    prune_between_fetches(tmp_path)
    served = servers.start(path)
    link = archive_link(first)
    index = served.client.get(link).text
    assert "1 now without their summary" in index and "1 no longer stored" in index
    url = [a.get("href") for a in lxml.html.fromstring(index).find_class("archive")[0].iter("a")][1]
    page = served.client.get(url).text
    note = lxml.html.fromstring(page).find_class("archive-note")[0].text_content()
    assert "1 of its 4 entries are older than 90d" in " ".join(note.split())
    assert "1 of its 4 entries are no longer stored at all" in " ".join(note.split())
    shown = lxml.html.fromstring(page).find_class("entry-title")
    titles = [" ".join(e.text_content().split()) for e in shown]
    assert KEPT[1] in titles and LEFT[1] not in titles  # kept by title and link; forgotten: left out
    words = " ".join(lxml.html.fromstring(page).text_content().split())
    assert "Stays listed" not in words  # its text is gone
    assert "A plain SNN post" in words


def test_bad_tokens_and_other_readers_digests_get_the_plain_404(
    tmp_path: Path, archive: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = archive
    served = servers.start(path)
    link = archive_link(smtp.handler.to(ADA)[0])
    token = link.rsplit("/", 1)[1]
    with state_db(tmp_path) as db:
        ids = dict(db.execute("select subscriber, max(id) from deliveries group by subscriber"))
    base = servers.base_url
    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    feed_token = Signer(WEB_SECRET.encode()).token("feed", ADA)
    vote_token = Signer(WEB_SECRET.encode()).token("vote", ADA)
    for url in (
        f"{base}/archive/{altered}",
        f"{base}/archive/{feed_token}",  # a token for another purpose
        f"{base}/archive/{token}/{ids[BOB]}",  # Bob's digest, with Ada's token
        f"{base}/archive/{token}/999999",
        f"{base}/archive/{altered}/{ids[ADA]}",
        f"{base}/feed/{altered}.atom",
        f"{base}/feed/{token}.atom",  # the archive's token is not the feed's
        f"{base}/feed/{vote_token}.atom",
    ):
        got = served.client.get(url)
        assert got.status_code == 404, url
        assert "Nothing was changed" in got.text and "Spiking" not in got.text
    assert served.client.get(f"{base}/archive/{token}/{ids[ADA]}").status_code == 200


def test_the_atom_feed_is_valid_and_its_ids_never_change(
    tmp_path: Path, archive: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = archive
    served = servers.start(path)
    base = servers.base_url
    index = lxml.html.fromstring(served.client.get(archive_link(smtp.handler.to(ADA)[0])).text)
    (url,) = [a.get("href") for a in index.iter("a") if (a.get("href") or "").endswith(".atom")]
    response = served.client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/atom+xml"

    parsed = feedparser.parse(response.content)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert [e.title for e in parsed.entries] == [str(m["Subject"]) for m in reversed(smtp.handler.to(ADA))]
    assert all(e.link.startswith(base + "/archive/") for e in parsed.entries)

    # What RFC 4287 requires, element by element.
    root = ET.fromstring(response.content)
    assert root.tag == f"{ATOM}feed"

    def one(parent: ET.Element, tag: str) -> ET.Element:
        found = parent.findall(f"{ATOM}{tag}")
        assert len(found) == 1, (tag, found)
        return found[0]

    rfc3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
    assert one(root, "id").text and one(root, "title").text
    assert rfc3339.fullmatch(one(root, "updated").text or "")
    assert one(one(root, "author"), "name").text == "Test Digest"
    links = {link.get("rel"): link.get("href") for link in root.findall(f"{ATOM}link")}
    assert links["self"] == url and links["alternate"].startswith(base + "/archive/")
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == 2
    ids = []
    for entry in entries:
        ids.append(one(entry, "id").text or "")
        uuid5 = r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
        assert re.fullmatch(uuid5, ids[-1])
        assert one(entry, "title").text
        updated = one(entry, "updated").text or ""
        assert rfc3339.fullmatch(updated)
        assert datetime.fromisoformat(updated.replace("Z", "+00:00")) <= datetime.now(UTC)
        link = one(entry, "link")
        assert link.get("rel") == "alternate" and (link.get("href") or "").startswith(base + "/archive/")
        assert served.client.get(link.get("href") or "").status_code == 200
        content = one(entry, "content")
        assert content.get("type") == "html"
        html = content.text or ""
        assert "<script" not in response.text  # escaped in the XML, and absent once unescaped
        assert_no_active_content(html)
        for element in lxml.html.fromstring(html).iter("a"):
            assert re.match(r"(https?|mailto):", element.get("href") or ""), element.get("href")
    assert len(set(ids)) == 2
    assert every_href_absolute(response.text)
    contents = root.iter(f"{ATOM}content")
    texts = [" ".join(lxml.html.fromstring(c.text or "").text_content().split()) for c in contents]
    assert any(HOSTILE_TITLE in text for text in texts)  # the feed's text, as text

    # Stable: the same feed again, byte for byte; after one more digest, the old ids stay.
    assert served.client.get(url).content == response.content
    last = ("e6", "Spiking neural networks, last", "https://lab.example.org/last", "SNN.")
    write_feed(tmp_path, KEPT, HOSTILE, PLAIN, AGENTS, LATER, last)
    run(path, "send")
    again = ET.fromstring(served.client.get(url).content)
    new_ids = [e.findtext(f"{ATOM}id") for e in again.findall(f"{ATOM}entry")]
    assert len(new_ids) == 3 and new_ids[1:] == ids


def every_href_absolute(xml: str) -> bool:
    """Every link element of the feed points at an absolute http(s) address."""
    root = ET.fromstring(xml.encode())
    return all(re.match(r"https?://", link.get("href") or "") for link in root.iter(f"{ATOM}link"))
