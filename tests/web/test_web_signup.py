"""Sign-up on a real ``digest serve`` (``[web] signup = true``): the form, the confirmation
email through a real aiosmtpd (or the Maildir outbox), confirming, expiry, the rate limits
shared by two processes, the same answer for every address, and sign-ups that the real
``digest send``, ``status``, ``links`` and ``preview`` treat like config subscribers."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from conftest import SmtpServer, body_text, smtp_section, state_db, text_titles, wait_for
from web_server import ServeProcess, WebServers, digest, web_config, web_env

SIGNUP = "[web]\nsignup = true\n"
NEW = "newton@example.org"
SPIKING = {  # the spiking topic's entries in tests/data/arxiv-cs.xml
    "Surrogate Gradient Learning in Deep Spiking Neural Networks Without Batch Normalization",
    "Event-Driven Keyword Spotting on a Neuromorphic Chip at 40 Microwatts",
    "Energy-Efficient Spiking Transformers for Event Camera Object Detection",
    "Liquid State Machines Revisited: Reservoir Size, Sparsity and Memory Capacity",
}


def signup_config(tmp_path: Path, server: Any, smtp: SmtpServer | None, **web: str) -> Path:
    keys = "".join(f"{key} = {value}\n" for key, value in web.items())
    return web_config(tmp_path, server.base_url, smtp=smtp_section(smtp) if smtp else "", web=SIGNUP + keys)


def sign_up(served: ServeProcess, email: str, topics: list[str], **headers: str) -> Any:
    """Fill in the form as a browser would (its own token) and send it."""
    page = served.client.get("/signup")
    assert page.status_code == 200, page.text
    (form,) = lxml.html.fromstring(page.text).forms
    values: dict[str, Any] = dict(form.form_values())
    values.update(email=email, topics=topics)
    return served.client.post("/signup", data=values, headers={"Sec-Fetch-Site": "same-origin", **headers})


def confirm_link(message: EmailMessage) -> str:
    (link,) = re.findall(r"http://127\.0\.0\.1:\d+(/signup/confirm/\S+)", body_text(message))
    return link


def signups(tmp_path: Path) -> list[tuple[Any, ...]]:
    try:
        with state_db(tmp_path) as db:
            return db.execute(
                "select email, topics, confirmed_at is not null, pending_topics from signups order by email"
            ).fetchall()
    except sqlite3.OperationalError:
        return []


def outbox(tmp_path: Path) -> list[EmailMessage]:
    """The messages in the config's Maildir outbox, oldest first."""
    files = sorted((tmp_path / "outbox" / "new").iterdir(), key=lambda f: f.stat().st_mtime_ns)
    return [message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]  # type: ignore[misc]


def visible(html: str) -> str:
    return " ".join(lxml.html.fromstring(html).find_class("content")[0].text_content().split())


def test_sign_up_is_off_unless_the_config_turns_it_on(tmp_path: Path, web_server: Any) -> None:
    served = web_server.start(web_config(tmp_path, web_server.base_url))
    assert served.client.get("/signup").status_code == 404
    assert served.client.post("/signup", data={"email": NEW}).status_code == 404
    assert signups(tmp_path) == []


def test_the_form_offers_every_topic_like_the_preferences_page(tmp_path: Path, web_server: Any) -> None:
    served = web_server.start(signup_config(tmp_path, web_server, None))
    page = served.client.get("/signup")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    (form,) = lxml.html.fromstring(page.text).forms
    boxes = [i for i in form.inputs if i.get("type") == "checkbox"]
    assert [(b.get("name"), b.get("value"), b.checked) for b in boxes] == [
        ("topics", "spiking", False),
        ("topics", "rl", False),
        ("topics", "diffusion", False),
    ]
    assert "Reinforcement learning" in form.text_content() and "not: trading" in form.text_content()
    assert form.method.lower() == "post" and form.inputs["csrf"].value


def test_double_opt_in_then_the_next_real_send_status_and_links_treat_them_as_subscribers(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = signup_config(tmp_path, web_server, smtp_server)
    served = web_server.start(config)
    answer = sign_up(served, NEW, ["spiking"])
    assert answer.status_code == 200, answer.text
    assert f"If {NEW} can be subscribed, an email with a confirmation link is on its way" in visible(
        answer.text
    )

    (mail,) = smtp_server.handler.to(NEW)
    assert mail["From"] == "Test Digest <digest@example.net>" and mail["To"] == NEW
    assert mail["Subject"] == "Confirm your subscription to Test Digest"
    assert mail["List-Id"] and mail["Auto-Submitted"] == "auto-generated" and mail["Message-ID"]
    assert "Spiking neural networks" in body_text(mail) and "works for 2 days" in body_text(mail)
    # Not a subscriber before the link's button is pressed: opening the link changes nothing.
    assert signups(tmp_path) == [(NEW, None, 0, '["spiking"]')]
    link = confirm_link(mail)
    page = served.client.get(link)
    assert page.status_code == 200 and "Confirm subscription" in page.text
    assert signups(tmp_path)[0][2] == 0
    status = digest(config, "status")
    assert NEW not in status.stdout, status.stdout

    done = served.client.post(link)
    assert done.status_code == 200, done.text
    assert f"Confirmed: {NEW} gets Test Digest." in visible(done.text)
    assert "Topics: Spiking neural networks. Schedule: daily 07:00" in visible(done.text)
    assert signups(tmp_path) == [(NEW, '["spiking"]', 1, None)]
    # The link was good once: used again, it shows the subscription as it stands.
    again = served.client.post(link)
    assert again.status_code == 200 and "Confirmed" not in visible(again.text)

    status = digest(config, "status")
    assert status.returncode == 0, status.stderr
    assert f"{NEW} (sign-up)" in status.stdout and "signed up on the web" in status.stdout
    links = digest(config, "links", "--subscriber", NEW)
    assert links.returncode == 0 and "/p/" in links.stdout, links.stdout + links.stderr
    preview = digest(
        config, "preview", "--subscriber", NEW, "--no-fetch", "--output", str(tmp_path / "p.html")
    )
    assert preview.returncode == 0, preview.stderr

    sent = digest(config, "send")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (mail, got) = smtp_server.handler.to(NEW)
    assert set(text_titles(body_text(got))) == SPIKING  # their topic, and only it
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # And `send --subscriber` knows them too.
    assert digest(config, "send", "--subscriber", NEW, "--no-fetch").returncode == 0


def test_the_answer_is_the_same_whoever_the_address_is(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    served = web_server.start(signup_config(tmp_path, web_server, smtp_server, signup_per_client="50"))
    pages = {}
    for email in ("ada@example.org", "grace@example.org", NEW, "nobody@example.org"):
        answer = sign_up(served, email, ["rl"])
        pages[email] = (answer.status_code, visible(answer.text).replace(email, "ADDRESS"))
    sign_up(served, NEW, ["rl"])  # (asked again within the hour: no second email)
    pages["again"] = pages[NEW]
    assert len(set(pages.values())) == 1, pages
    # The emails differ, and only their owners read them: a subscriber is told where their
    # preferences are, and nothing of theirs changed.
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert ada["Subject"] == "You already get Test Digest"
    assert "/p/" in body_text(ada) and "/signup/confirm/" not in body_text(ada)
    (grace,) = smtp_server.handler.to("grace@example.org")
    assert grace["Subject"] == "You already get Test Digest"
    assert len(smtp_server.handler.to(NEW)) == 1
    assert [row[0] for row in signups(tmp_path)] == [NEW, "nobody@example.org"]


def test_hostile_input_is_refused_and_reaches_no_header(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    served = web_server.start(signup_config(tmp_path, web_server, smtp_server, signup_per_client="50"))
    for email in (
        "victim@example.org\r\nBcc: many@example.org",
        "victim@example.org\nSubject: spam",
        "<script>@example.org",
        "a@b",
        "x" * 300 + "@example.org",
        "",
    ):
        answer = sign_up(served, email, ["rl"])
        assert answer.status_code == 400, (email, answer.text)
        assert "Nothing was sent" in answer.text and "<script>" not in answer.text
    assert sign_up(served, NEW, ["rl", "no-such-topic"]).status_code == 400
    assert sign_up(served, NEW, []).status_code == 400
    # Cross-site or token-less posts are refused.
    assert served.client.post("/signup", data={"email": NEW, "topics": "rl"}).status_code == 403
    assert sign_up(served, NEW, ["rl"], **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert smtp_server.handler.messages == [] and signups(tmp_path) == []
    # A bad confirmation token is a plain 404 that changes nothing.
    assert served.client.get("/signup/confirm/abc.123.def").status_code == 404
    assert served.client.post("/signup/confirm/abc.123.def").status_code == 404


def test_rate_limits_hold_across_two_serve_processes_and_ignore_a_forged_forwarded_for(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = signup_config(tmp_path, web_server, smtp_server, signup_per_client="3")
    first = web_server.start(config)
    other = WebServers()  # a second process on the same database (its own port)
    try:
        second = other.start(config)
        answers = [
            sign_up(first, "a1@example.org", ["rl"]),
            sign_up(second, "a2@example.org", ["rl"], **{"X-Forwarded-For": "203.0.113.7"}),
            sign_up(first, "a3@example.org", ["rl"], **{"X-Forwarded-For": "203.0.113.8"}),
            sign_up(second, "a4@example.org", ["rl"], **{"X-Forwarded-For": "198.51.100.1"}),
        ]
    finally:
        other.stop_all()
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].headers["Retry-After"] == "3600" and "Nothing was sent" in answers[3].text
    assert sorted(rcpts[0] for _, rcpts in smtp_server.handler.envelopes) == [
        "a1@example.org",
        "a2@example.org",
        "a3@example.org",
    ]


def test_behind_a_trusted_proxy_each_client_it_names_has_its_own_limit(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = signup_config(
        tmp_path, web_server, smtp_server, signup_per_client="1", trusted_proxies='["127.0.0.1"]'
    )
    served = web_server.start(config)
    ok = [
        sign_up(served, "b1@example.org", ["rl"], **{"X-Forwarded-For": "203.0.113.7"}),
        # the client may prepend what it likes: the proxy's own entry (the right-most) counts
        sign_up(served, "b2@example.org", ["rl"], **{"X-Forwarded-For": "203.0.113.7, 198.51.100.9"}),
        sign_up(served, "b3@example.org", ["rl"], **{"X-Forwarded-For": "2001:db8::1"}),
    ]
    assert [a.status_code for a in ok] == [200, 200, 200]
    refused = [
        sign_up(served, "b4@example.org", ["rl"], **{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}),
        sign_up(served, "b5@example.org", ["rl"], **{"X-Forwarded-For": "2001:db8::2"}),  # same /64
    ]
    assert [a.status_code for a in refused] == [429, 429]
    with state_db(tmp_path) as db:
        clients = {k for (k,) in db.execute("select key from signup_requests where kind = 'client'")}
    assert clients == {"203.0.113.7", "198.51.100.9", "2001:db8::/64"}


def test_an_unconfirmed_sign_up_expires_and_is_pruned_and_a_newer_link_replaces_an_older(
    tmp_path: Path, web_server: Any
) -> None:
    # No [smtp]: the confirmations go to the Maildir outbox, as digests would.
    config = signup_config(tmp_path, web_server, None, signup_expires='"3s"', signup_per_address="2")
    served = web_server.start(config)
    sign_up(served, NEW, ["rl"])
    sign_up(served, NEW, ["diffusion"])
    first, second = outbox(tmp_path)
    old_link, new_link = confirm_link(first), confirm_link(second)
    assert served.client.get(old_link).status_code == 404  # replaced by the newer request
    assert "Diffusion models" in served.client.get(new_link).text
    sign_up(served, "late@example.org", ["rl"])
    time.sleep(3.2)
    assert served.client.get(new_link).status_code == 404  # expired
    assert served.client.post(new_link).status_code == 404
    assert [row[0] for row in signups(tmp_path)] == ["late@example.org", NEW]
    sign_up(served, "third@example.org", ["rl"])  # (a request prunes the expired ones)
    assert [row[0] for row in signups(tmp_path)] == ["third@example.org"]
    assert digest(config, "status").stdout.count("example.org (sign-up)") == 0


def test_a_sign_up_who_unsubscribed_gets_nothing_until_they_confirm_again(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = signup_config(tmp_path, web_server, smtp_server, signup_per_address="5")
    served = web_server.start(config)
    sign_up(served, NEW, ["spiking"])
    assert served.client.post(confirm_link(smtp_server.handler.to(NEW)[-1])).status_code == 200
    links = digest(config, "links", "--subscriber", NEW).stdout
    (unsubscribe,) = re.findall(r"unsubscribe:\s+http://127\.0\.0\.1:\d+(\S+)", links)
    assert served.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert digest(config, "send").returncode == 0
    assert len(smtp_server.handler.to(NEW)) == 1  # only the confirmation
    assert "unsubscribed (web" in digest(config, "status").stdout
    # Signing up again asks for a confirmation again (not "you already get it").
    sign_up(served, NEW, ["rl"])
    again = smtp_server.handler.to(NEW)[-1]
    assert again["Subject"] == "Confirm your subscription to Test Digest"
    assert served.client.post(confirm_link(again)).status_code == 200
    assert digest(config, "send").returncode == 0
    wait_for(lambda: len(smtp_server.handler.to(NEW)) == 3, timeout=5)
    titles = set(text_titles(body_text(smtp_server.handler.to(NEW)[-1])))
    assert titles and not titles & SPIKING  # their new topic


@pytest.mark.parametrize("sent", [True, False], ids=["smtp", "maildir"])
def test_the_confirmation_is_a_valid_plain_text_email(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any, sent: bool
) -> None:
    served = web_server.start(signup_config(tmp_path, web_server, smtp_server if sent else None))
    assert sign_up(served, "Emile.Zola@Example.org", ["rl"]).status_code == 200
    (mail,) = smtp_server.handler.messages if sent else outbox(tmp_path)
    assert mail.get_content_type() == "text/plain" and mail["To"] == "Emile.Zola@example.org"
    assert all(len(line.rstrip(b"\r")) <= 78 for line in mail.as_bytes().split(b"\n"))
    assert served.client.get(confirm_link(mail)).status_code == 200


def test_digest_run_serves_a_sign_up_on_its_schedule(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = signup_config(tmp_path, web_server, smtp_server, signup_schedule='"every 2s"')
    served = web_server.start(config)
    sign_up(served, NEW, ["spiking"])
    assert served.client.post(confirm_link(smtp_server.handler.to(NEW)[0])).status_code == 200
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=web_env(),
        )
        try:
            wait_for(lambda: len(smtp_server.handler.to(NEW)) == 2, timeout=40)
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
    assert set(text_titles(body_text(smtp_server.handler.to(NEW)[1]))) == SPIKING
    assert f"digest to={NEW}" in log.read_text()
