""""More / less like this" beside each entry, end to end: real ``digest send`` into aiosmtpd,
the links read from the messages, a real ``digest serve`` process driven over HTTP, and the
effect read back from the state database, ``digest status``, ``match --explain`` and the next
real send.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import lxml.html
import pytest
from conftest import SmtpServer, body_html, body_text, smtp_section, state_db, text_titles
from web_server import WEB_SECRET, digest

from pipeline.web.tokens import Signer

ADA, BOB, CAROL = "ada@example.org", "bob@example.org", "carol@example.org"

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
topics = ["spiking"]

[[subscribers]]
email = "carol@example.org"
topics = ["rl"]

{smtp}
"""

BUDGET = ("post-1", "Spiking neural networks on a budget", "https://lab.example.org/posts/budget")
CHIP = ("post-2", "A spiking neural network chip", "https://lab.example.org/posts/chip")
AGENTS = ("post-3", "Reinforcement learning agents that explore", "https://lab.example.org/posts/agents")


def item(guid: str, title: str, link: str, text: str) -> str:
    return (
        f"<item><guid>{guid}</guid><title>{title}</title><link>{link}</link>"
        f"<description>{text}</description><pubDate>Fri, 04 Dec 2026 10:00:00 +0000</pubDate></item>"
    )


def write_feed(tmp_path: Path, *items: str) -> None:
    (tmp_path / "lab.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>Lab notes</title>'
        "<link>https://lab.example.org/</link><description>x</description>"
        + "".join(items)
        + "</channel></rss>\n",
        encoding="utf-8",
    )


def first_feed(tmp_path: Path) -> None:
    write_feed(
        tmp_path,
        item(*BUDGET, "How to train a spiking neural network on one laptop."),
        item(*CHIP, "A chip for spiking neural network inference."),
        item(*AGENTS, "Curiosity for reinforcement learning agents."),
    )


def config(tmp_path: Path, base_url: str, smtp: SmtpServer) -> Path:
    first_feed(tmp_path)
    path = tmp_path / "digest.toml"
    path.write_text(
        CONFIG.format(base_url=base_url, feed=tmp_path / "lab.xml", smtp=smtp_section(smtp)), encoding="utf-8"
    )
    return path


def send(path: Path) -> None:
    done = digest(path, "send")
    assert done.returncode == 0, done.stdout + done.stderr


def votes(tmp_path: Path) -> list[tuple[Any, ...]]:
    """The votes table as it is now (empty when nobody voted, or before it exists)."""
    try:
        with state_db(tmp_path) as db:
            return db.execute("select subscriber, entry_id, vote, at from votes order by entry_id").fetchall()
    except sqlite3.OperationalError:
        return []


def vote_links(base_url: str, html: str) -> dict[str, dict[str, str]]:
    """Each entry's vote links in an HTML part, by entry title: {"more": url, "less": url}."""
    found: dict[str, dict[str, str]] = {}
    for cell in lxml.html.fromstring(html).find_class("entry"):
        title = " ".join(cell.find_class("entry-title")[0].text_content().split())
        (line,) = cell.find_class("vote")
        links = {a.text_content(): a.get("href") for a in line.iter("a")}
        assert set(links) == {"More like this", "Less like this"}, links
        found[title] = {"more": links["More like this"], "less": links["Less like this"]}
        for vote, url in found[title].items():
            shape = re.escape(base_url) + rf"/v/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+/\d+/{vote}"
            assert re.fullmatch(shape, url), url
    return found


def parts(url: str) -> tuple[str, int, str]:
    token, entry_id, vote = url.rsplit("/", 3)[1:]
    return token, int(entry_id), vote


def submit(client: httpx.Client, url: str, **headers: str) -> httpx.Response:
    """Open a vote page and press its button, as a browser does (the form posts to the page)."""
    page = client.get(url)
    assert page.status_code == 200, page.text
    (form,) = lxml.html.fromstring(page.text).forms
    assert form.method.lower() == "post" and not form.action
    return client.post(url, data=dict(form.form_values()), headers=headers)


@pytest.fixture
def sent(tmp_path: Path, smtp_server: SmtpServer, web_server: Any) -> tuple[Path, SmtpServer, Any]:
    path = config(tmp_path, web_server.base_url, smtp_server)
    send(path)
    return path, smtp_server, web_server


def test_links_in_both_parts_a_get_records_nothing_the_button_records(
    tmp_path: Path, sent: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = sent
    (message,) = smtp.handler.to(ADA)
    links = vote_links(servers.base_url, body_html(message))
    assert set(links) == {BUDGET[1], CHIP[1]}
    text = body_text(message).replace("\r\n", "\n")
    for both in links.values():
        for url in both.values():
            assert f"\n    {url}\n" in text  # the text part's reference list, a line each
    tokens = {parts(url)[0] for both in links.values() for url in both.values()}
    (token,) = tokens  # one token for the whole email
    assert Signer(WEB_SECRET.encode()).subject("vote", token) == ADA
    (to_bob,) = smtp.handler.to(BOB)
    bob_links = vote_links(servers.base_url, body_html(to_bob))
    assert {parts(u)[0] for both in bob_links.values() for u in both.values()} != tokens

    served = servers.start(path)
    less = links[BUDGET[1]]["less"]
    budget_id = parts(less)[1]
    for _ in range(3):  # scanners and previews open links again and again
        page = served.client.get(less)
        assert page.status_code == 200
        assert served.client.head(less).status_code == 200
    assert votes(tmp_path) == []
    assert BUDGET[1] in page.text and "not sent to you again" in page.text
    assert "Opening this page recorded nothing" in page.text

    done = submit(served.client, less)
    assert done.status_code == 200 and "Recorded: less like this" in done.text
    ((who, entry_id, vote, at),) = votes(tmp_path)
    assert (who, entry_id, vote) == (ADA, budget_id, "less")
    again = submit(served.client, less)  # the same vote again: idempotent
    assert "nothing changed" in again.text
    assert votes(tmp_path) == [(ADA, budget_id, "less", at)]
    changed = submit(served.client, links[BUDGET[1]]["more"])  # a changed vote replaces the old
    assert "replaces your earlier vote, less like this" in changed.text
    assert [v[:3] for v in votes(tmp_path)] == [(ADA, budget_id, "more")]
    assert "You voted more like this on this entry before" in served.client.get(less).text
    submit(served.client, less)
    submit(served.client, links[CHIP[1]]["more"])
    chip_id = parts(links[CHIP[1]]["more"])[1]
    expected = sorted([(ADA, budget_id, "less"), (ADA, chip_id, "more")], key=lambda v: v[1])
    assert [v[:3] for v in votes(tmp_path)] == expected

    status = digest(path, "status")
    assert status.returncode == 0, status.stderr
    assert "votes (more / less like this): ada@example.org 1 / 1" in " ".join(status.stdout.split())
    explained = digest(path, "match", "--explain", BUDGET[2])
    assert explained.returncode == 0, explained.stderr
    assert "votes: 0 more like this, 1 less like this" in explained.stdout
    assert "less: ada@example.org" in explained.stdout
    only_bob = digest(path, "match", "--explain", BUDGET[2], "--subscriber", BOB)
    assert "votes: none" in only_bob.stdout


def test_less_like_this_hides_a_later_edit_of_that_entry_from_that_reader(
    tmp_path: Path, sent: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = sent
    (message,) = smtp.handler.to(ADA)
    served = servers.start(path)
    links = vote_links(servers.base_url, body_html(message))
    assert "Recorded" in submit(served.client, links[BUDGET[1]]["less"]).text
    assert "Recorded" in submit(served.client, links[CHIP[1]]["more"]).text

    # The blog re-posts both posts under new guids with their text corrected (the identity
    # rules cannot know them: new entries), and adds one.
    corrected = item("post-1-v2", BUDGET[1], BUDGET[2], "Corrected: training a spiking neural network.")
    write_feed(
        tmp_path,
        corrected,
        item("post-2-v2", CHIP[1], CHIP[2], "Corrected: a chip for spiking neural network inference."),
        item("post-4", "Spiking neural networks that sleep", "https://lab.example.org/posts/sleep", "SNN."),
    )
    send(path)
    to_ada, to_bob = smtp.handler.to(ADA)[-1], smtp.handler.to(BOB)[-1]
    assert len(smtp.handler.to(ADA)) == len(smtp.handler.to(BOB)) == 2
    # Bob did not vote: he gets both edits and the new post; Ada's "less" hides its edit only.
    sleep = "Spiking neural networks that sleep"
    assert sorted(text_titles(body_text(to_bob))) == sorted([BUDGET[1], CHIP[1], sleep])
    assert sorted(text_titles(body_text(to_ada))) == sorted([CHIP[1], sleep])
    # Still hidden at the send after (nothing recorded it as sent: the vote keeps it away).
    write_feed(
        tmp_path,
        corrected,
        item("post-5", "Spiking neural networks, part two", "https://lab.example.org/posts/two", "SNN."),
    )
    send(path)
    assert text_titles(body_text(smtp.handler.to(ADA)[-1])) == ["Spiking neural networks, part two"]


def test_bad_tokens_other_readers_entries_and_foreign_forms_record_nothing(
    tmp_path: Path, sent: tuple[Path, SmtpServer, Any]
) -> None:
    path, smtp, servers = sent
    served = servers.start(path)
    ada = vote_links(servers.base_url, body_html(smtp.handler.to(ADA)[0]))
    bob = vote_links(servers.base_url, body_html(smtp.handler.to(BOB)[0]))
    carol = vote_links(servers.base_url, body_html(smtp.handler.to(CAROL)[0]))
    token, budget_id, _ = parts(ada[BUDGET[1]]["less"])
    agents_id = parts(carol[AGENTS[1]]["less"])[1]
    base = servers.base_url
    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    archive_token = Signer(WEB_SECRET.encode()).token("archive", ADA)
    other_key = Signer(b"another-key-that-is-long-enough-0123456789").token("vote", ADA)
    for url in (
        f"{base}/v/{altered}/{budget_id}/less",  # altered
        f"{base}/v/{archive_token}/{budget_id}/less",  # a token for another purpose
        f"{base}/v/{other_key}/{budget_id}/less",  # signed with another key
        f"{base}/v/{token}/{agents_id}/less",  # Carol's entry: never sent to Ada
        f"{base}/v/{token}/999999/less",  # no such entry
        f"{base}/v/{token}/{budget_id}/maybe",  # no such vote
    ):
        got = served.client.get(url)
        assert got.status_code == 404, url
        assert "Nothing was changed" in got.text
        assert served.client.post(url, data={"csrf": "x"}).status_code in (403, 404)
    assert votes(tmp_path) == []

    less = ada[BUDGET[1]]["less"]
    (form,) = lxml.html.fromstring(served.client.get(less).text).forms
    values = dict(form.form_values())
    # No form token, another entry's, another reader's, or from another site: 403, nothing kept.
    assert served.client.post(less, data={}).status_code == 403
    assert served.client.post(ada[CHIP[1]]["less"], data=values).status_code == 403
    (bob_form,) = lxml.html.fromstring(served.client.get(bob[BUDGET[1]]["less"]).text).forms
    assert served.client.post(less, data=dict(bob_form.form_values())).status_code == 403
    assert served.client.post(less, data=values, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    elsewhere = {"Origin": "https://evil.example"}
    assert served.client.post(less, data=values, headers=elsewhere).status_code == 403
    assert votes(tmp_path) == []
    # The page itself: no script, no cookie, the security headers.
    page = served.client.get(less)
    assert "set-cookie" not in page.headers
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert not list(lxml.html.fromstring(page.text).iter("script"))
    assert served.client.post(less, data=values).status_code == 200
    assert [v[:3] for v in votes(tmp_path)] == [(ADA, budget_id, "less")]
