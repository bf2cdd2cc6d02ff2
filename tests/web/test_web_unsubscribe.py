"""One-click unsubscribe (RFC 8058) against a real ``digest serve`` process, driven over HTTP.

The links come from real messages (``digest send`` into aiosmtpd) and from ``digest links``;
what the server did is read back from the state database file and from the next real send.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import lxml.html
from conftest import SmtpServer, body_html, body_text, smtp_section, state_db
from web_server import OLD_WEB_SECRET, WEB_SECRET, add_entries, digest, web_config, web_env

from pipeline.store import Store
from pipeline.web.tokens import Signer

ADA = "ada@example.org"
PATHS = {"unsubscribe": "/u/", "preferences": "/p/"}


def readers(tmp_path: Path) -> list[tuple[Any, ...]]:
    """The readers table as it is now (empty when no one chose anything)."""
    try:
        with state_db(tmp_path) as db:
            return db.execute(
                "select email, unsubscribed_at, topics, schedule, paused_until from readers"
            ).fetchall()
    except sqlite3.OperationalError:
        return []


def link(base_url: str, purpose: str, email: str, key: str = WEB_SECRET) -> str:
    """A subscriber's link as digest signs it (the path shapes of pipeline/web/links.py)."""
    token = Signer(key.encode()).token(purpose, email.lower())
    return f"{base_url}{PATHS[purpose]}{token}"


def one_click(url: str) -> httpx.Response:
    """The POST a mail client makes for RFC 8058 (no cookie, no redirect followed)."""
    return httpx.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False, timeout=10)


def test_the_list_unsubscribe_link_of_a_sent_digest_unsubscribes_by_one_click_post(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server))
    sent = digest(config, "send")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (message,) = smtp_server.handler.to(ADA)
    # RFC 8058: an https (here loopback http) URL first, the mailto after, and the Post header.
    header = " ".join(str(message["List-Unsubscribe"]).split())
    found = re.fullmatch(
        r"<(http://127\.0\.0\.1:\d+/u/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)>, <mailto:[^>]+>", header
    )
    assert found, header
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = found[1]
    assert url.startswith(web_server.base_url + "/u/")
    # The footer links to the same page, and to the preferences (HTML and text parts).
    assert url in body_text(message).split() and url in body_html(message)
    preferences = link(web_server.base_url, "preferences", ADA)
    assert preferences in body_text(message).split() and preferences in body_html(message)

    web_server.start(config)
    response = one_click(url)
    assert response.status_code == 200, response.text
    assert "location" not in response.headers and "set-cookie" not in response.headers
    assert "is unsubscribed" in response.text
    ((email, unsubscribed_at, *_),) = readers(tmp_path)
    assert email == ADA and unsubscribed_at is not None
    # A second POST (a client retrying) changes nothing more.
    assert one_click(url).status_code == 200
    assert readers(tmp_path)[0][1] == unsubscribed_at

    # New entries on both readers' topics arrive; the next send goes to Grace only.
    add_entries(tmp_path, "A spiking neural network on a chip", "A diffusion model for proteins")
    again = digest(config, "send")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(smtp_server.handler.to(ADA)) == 1  # the first digest only
    to_grace = smtp_server.handler.to("Grace@example.org")[-1]
    assert len(smtp_server.handler.to("Grace@example.org")) == 2
    assert "A diffusion model for proteins" in body_text(to_grace)
    assert re.search(
        r"no digest for ada@example\.org: unsubscribed \(web, at \d{4}-\d\d-\d\d \d\d:\d\d UTC\)",
        again.stdout,
    )


def test_a_get_changes_nothing_and_its_button_unsubscribes(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    served = web_server.start(config)
    url = link(web_server.base_url, "unsubscribe", ADA)
    for _ in range(3):  # mail scanners and link previews open links, again and again
        page = served.client.get(url)
        assert page.status_code == 200
        assert served.client.head(url).status_code == 200
    assert readers(tmp_path) == []
    tree = lxml.html.fromstring(page.text)
    (form,) = tree.forms
    assert form.method.lower() == "post"
    assert dict(form.form_values()) == {"List-Unsubscribe": "One-Click"}
    hrefs = [a.get("href") for a in tree.iter("a")]
    assert link(web_server.base_url, "preferences", ADA) in hrefs
    assert ADA in page.text
    # The button, as a browser submits it: to the form's action resolved against the page.
    action = form.action or url
    done = served.client.post(action, data=dict(form.form_values()))
    assert done.status_code == 200 and "is unsubscribed" in done.text
    assert readers(tmp_path)[0][0] == ADA and readers(tmp_path)[0][1] is not None
    # The page now says so, and still changes nothing by being opened.
    assert "already unsubscribed" in served.client.get(url).text


def test_bad_or_altered_tokens_get_a_plain_404_and_change_nothing(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    served = web_server.start(config)
    good = Signer(WEB_SECRET.encode()).token("unsubscribe", ADA)
    subject, mac = good.split(".")
    grace = Signer(WEB_SECRET.encode()).token("unsubscribe", "grace@example.org")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    bad = [
        "nonsense",
        f"{subject}.{flipped}",  # the MAC altered by one character
        f"{grace.split('.')[0]}.{mac}",  # another subscriber's address with ada's MAC
        Signer(WEB_SECRET.encode()).token("preferences", ADA),  # signed for another purpose
        Signer(b"another-key-that-is-long-enough-0123456789").token("unsubscribe", ADA),
        Signer(WEB_SECRET.encode()).token("unsubscribe", "nobody@example.org"),  # not a subscriber
        good[:-4],  # cut short
        f"{good}.x",
        "%00",
    ]
    # The same tokens made for the preferences page, and the good unsubscribe one there.
    preferences = [Signer(WEB_SECRET.encode()).token("unsubscribe", ADA), "nonsense", good[:-4]]
    for token in bad:
        for response in (
            served.client.get(f"/u/{token}"),
            served.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}),
        ):
            assert response.status_code == 404, (token, response.status_code)
            assert "This link is not valid" in response.text and "Nothing was changed" in response.text
            assert "<script" not in response.text
    for token in preferences:
        for response in (served.client.get(f"/p/{token}"), served.client.post(f"/p/{token}", data={})):
            assert response.status_code == 404, (token, response.status_code)
            assert "This link is not valid" in response.text and "Nothing was changed" in response.text
            assert "<script" not in response.text
    assert readers(tmp_path) == []
    # A POST without the one-click body is refused too (400), and changes nothing.
    refused = served.client.post(f"/u/{good}", data={"List-Unsubscribe": "yes"})
    assert refused.status_code == 400 and "Nothing was changed" in refused.text
    assert readers(tmp_path) == []


def test_an_old_key_still_verifies_after_a_rotation_and_only_while_kept(
    tmp_path: Path, web_server: Any
) -> None:
    rotated = '[web]\nsecret_env = "DIGEST_WEB_SECRET"\nold_secrets_env = "DIGEST_WEB_OLD_SECRETS"\n'
    config = web_config(tmp_path, web_server.base_url, web=rotated)
    old_link = link(web_server.base_url, "unsubscribe", ADA, key=OLD_WEB_SECRET)
    # Serve with the new key only: the link sent before the rotation is refused.
    served = web_server.start(config, env=web_env())
    assert served.client.get(old_link).status_code == 404
    served.stop()
    # With the old key kept for verification, the old link works; new links use the new key.
    served = web_server.start(config, env=web_env(DIGEST_WEB_OLD_SECRETS=f"{'x' * 40}, {OLD_WEB_SECRET}"))
    assert served.client.get(old_link).status_code == 200
    assert one_click(old_link).status_code == 200
    assert readers(tmp_path)[0][0] == ADA
    printed = digest(config, "links", "--subscriber", "grace@example.org")
    assert printed.returncode == 0, printed.stderr
    assert link(web_server.base_url, "unsubscribe", "grace@example.org") in printed.stdout.split()
    assert (
        link(web_server.base_url, "unsubscribe", "grace@example.org", key=OLD_WEB_SECRET)
        not in printed.stdout
    )


def test_every_response_carries_the_security_headers_and_no_cookie(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    served = web_server.start(config)
    unsubscribe = link(web_server.base_url, "unsubscribe", ADA)
    responses = [
        served.client.get("/"),
        served.client.get("/style.css"),
        served.client.get(unsubscribe),
        served.client.get("/u/bad.token"),
        served.client.get("/no/such/page"),
        served.client.get(link(web_server.base_url, "preferences", ADA)),
        served.client.post(link(web_server.base_url, "preferences", ADA), data={"action": "save"}),  # 403
        served.client.put(unsubscribe),  # 405
        served.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 404, 200, 403, 405, 200]
    for response in responses:
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp, csp  # no script of any kind
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "set-cookie" not in headers
        assert "<script" not in response.text.lower()


def test_links_come_from_base_url_never_from_the_host_header(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    served = web_server.start(config)
    url = link(web_server.base_url, "unsubscribe", ADA)
    page = served.client.get(url, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
    assert page.status_code == 200
    hrefs = [a.get("href") for a in lxml.html.fromstring(page.text).iter("a")]
    assert hrefs and all(h.startswith(web_server.base_url + "/") for h in hrefs), hrefs
    assert "evil.example" not in page.text


def test_serve_refuses_to_start_without_the_key_or_the_base_url(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    missing = digest(config, "serve", "--port", str(web_server.port), env=web_env(secret=None))
    assert missing.returncode == 1
    assert "DIGEST_WEB_SECRET" in missing.stderr and "signing key" in missing.stderr, missing.stderr
    short = digest(config, "serve", "--port", str(web_server.port), env=web_env(secret="short"))
    assert short.returncode == 1 and "too short" in short.stderr
    # send refuses too, before planning anything: the links it would write cannot be signed.
    sent = digest(config, "send", env=web_env(secret=None))
    assert sent.returncode == 1 and "DIGEST_WEB_SECRET" in sent.stderr
    assert digest(config, "check", env=web_env(secret=None)).returncode == 2
    # Without base_url there is no public address to build links from.
    config.write_text(config.read_text().replace(f'base_url = "{web_server.base_url}"', ""))
    no_base = digest(config, "serve", "--port", str(web_server.port))
    assert no_base.returncode == 1 and "base_url" in no_base.stderr


def test_base_url_is_https_or_loopback_http(tmp_path: Path) -> None:
    for url, ok in [
        ("https://digest.example.org", True),
        ("http://localhost:8080", True),
        ("http://127.0.0.1:8080/", True),
        ("http://digest.example.org", False),
        ("https://digest.example.org/?x=1", False),
    ]:
        config = web_config(tmp_path, url)
        checked = digest(config, "check")
        assert (checked.returncode == 0) is ok, (url, checked.stdout + checked.stderr)
        if not ok:
            assert "digest.base_url" in checked.stderr and ":6:" in checked.stderr, checked.stderr


def test_one_click_in_multipart_form_and_many_requests_at_once(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    web_server.start(config)
    urls = [link(web_server.base_url, "unsubscribe", email) for email in (ADA, "grace@example.org")]
    # RFC 8058 allows the body as multipart/form-data too.
    multipart = httpx.post(urls[0], files={"List-Unsubscribe": (None, "One-Click")}, timeout=10)
    assert multipart.status_code == 200 and "is unsubscribed" in multipart.text
    # And bare, from a client that names no content type.
    bare = httpx.post(
        urls[1], content=b"List-Unsubscribe=One-Click", headers={"Content-Type": ""}, timeout=10
    )
    assert bare.status_code == 200 and len(readers(tmp_path)) == 2

    def hit(i: int) -> int:
        with httpx.Client(timeout=20) as client:
            if i % 3 == 0:
                return client.get(urls[i % 2]).status_code
            return client.post(urls[i % 2], data={"List-Unsubscribe": "One-Click"}).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(hit, range(60)))
    assert codes == [200] * 60
    assert sorted(row[0] for row in readers(tmp_path)) == [ADA, "grace@example.org"]
    assert all(row[1] is not None for row in readers(tmp_path))


def test_a_digest_waiting_in_the_outbox_is_not_sent_once_its_reader_unsubscribed(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    # Every attempt of the first send fails (3 in the run), the next would succeed.
    smtp_server.handler.faults[ADA] = ["451 4.3.0 try later"] * 3 + [None]
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server))
    first = digest(config, "send")
    assert first.returncode == 3, first.stdout + first.stderr  # ada's digest waits for a retry
    assert smtp_server.handler.to(ADA) == []
    served = web_server.start(config)
    assert (
        served.client.post(
            link(web_server.base_url, "unsubscribe", ADA), data={"List-Unsubscribe": "One-Click"}
        ).status_code
        == 200
    )
    retry = digest(config, "send", "--retry-now", "--no-fetch")
    assert smtp_server.handler.to(ADA) == [], retry.stdout
    with state_db(tmp_path) as db:
        ((state, error),) = db.execute(
            "select state, last_error from deliveries where subscriber = ?", (ADA,)
        )
    assert state == "failed" and error.startswith("not sent: the reader unsubscribed (web, at "), error
    assert smtp_server.handler.attempts[ADA] == 3  # never offered to the server again


def test_two_racing_unsubscribes_keep_the_first_time(tmp_path: Path, monkeypatch: Any) -> None:
    """Another process's unsubscribe commits between any two transactions of this one: exactly
    one of the two records it, and the time and way it recorded stay; other choices stay too."""
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with Store(url) as ours, Store(url) as other:
        ours.record_reader_choices(ADA, t0, topics=["rl"], schedule="daily 07:00")
        results: dict[str, bool] = {}
        tx = ours._tx

        @contextmanager
        def then_the_other(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with tx(*args, **kwargs) as conn:
                yield conn
            if "other" not in results:  # right after this process's first transaction
                results["other"] = other.unsubscribe_reader(ADA, t0 + timedelta(minutes=1), via="one-click")

        monkeypatch.setattr(ours, "_tx", then_the_other)
        results["ours"] = ours.unsubscribe_reader(ADA, t0 + timedelta(minutes=2), via="web")
        monkeypatch.undo()
        assert sorted(results.values()) == [False, True], results  # one of them unsubscribed
        winner = next(who for who, done in results.items() if done)
        at, via = {"other": (1, "one-click"), "ours": (2, "web")}[winner]
        found = ours.reader_choice(ADA)
        assert found is not None
        assert (found.unsubscribed_at, found.unsubscribed_via) == (t0 + timedelta(minutes=at), via)
        assert (found.topics, found.schedule) == (("rl",), "daily 07:00")
        # Once unsubscribed, again changes nothing; after subscribing again, it records anew.
        assert not ours.unsubscribe_reader(ADA, t0 + timedelta(hours=1))
        assert ours.reader_choice(ADA) == found
        ours.record_reader_choices(ADA, t0 + timedelta(hours=2), unsubscribed_at=None, unsubscribed_via=None)
        assert ours.unsubscribe_reader(ADA.upper(), t0 + timedelta(hours=3))
        again = ours.reader_choice(ADA)
        assert again is not None and again.unsubscribed_at == t0 + timedelta(hours=3)
        assert again.topics == ("rl",) and again.unsubscribed_via == "web"
        # A reader who never chose anything gets a row with only that.
        assert other.unsubscribe_reader("new@example.org", t0)
        new = other.reader_choice("new@example.org")
        assert new is not None and (new.unsubscribed_at, new.topics, new.paused_until) == (t0, None, None)
