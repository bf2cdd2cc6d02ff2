"""The preferences page of a real ``digest serve``: the form, CSRF refusals, and choices that
the next real ``digest send`` (into aiosmtpd), ``status`` and ``check`` follow."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lxml.html
from conftest import SmtpServer, body_text, smtp_section, state_db, text_titles
from web_server import WEB_SECRET, ServeProcess, add_entries, digest, web_config

from pipeline.web.tokens import Signer

ADA = "ada@example.org"
SIGNER = Signer(WEB_SECRET.encode())
RL = {
    "Offline Reinforcement Learning with Conservative Value Ensembles",
    "Reward Models That Know What They Don't Know: Uncertainty-Aware RLHF",
    "Multi-Armed Bandits with Delayed and Aggregated Feedback",
}


def preferences_url(email: str = ADA) -> str:
    return f"/p/{SIGNER.token('preferences', email.lower())}"


def readers(tmp_path: Path) -> list[tuple[Any, ...]]:
    try:
        with state_db(tmp_path) as db:
            return db.execute(
                "select email, unsubscribed_at, topics, schedule, paused_until from readers"
            ).fetchall()
    except sqlite3.OperationalError:
        return []


def form_of(served: ServeProcess, url: str) -> tuple[Any, dict[str, Any]]:
    """The page's form and the values a browser would send as it stands (checked boxes, the
    selected option, hidden fields), as a dict of lists."""
    page = served.client.get(url)
    assert page.status_code == 200, page.text
    (form,) = lxml.html.fromstring(page.text).forms
    values: dict[str, Any] = {}
    for name, value in form.form_values():
        values.setdefault(name, []).append(value)
    return form, values


def submit(served: ServeProcess, url: str, values: dict[str, Any], **headers: str) -> Any:
    return served.client.post(url, data=values, headers={"Sec-Fetch-Site": "same-origin", **headers})


def test_the_form_offers_every_topic_with_its_title_and_what_it_matches(
    tmp_path: Path, web_server: Any
) -> None:
    served = web_server.start(web_config(tmp_path, web_server.base_url))
    form, values = form_of(served, preferences_url())
    boxes = {box.get("value"): box for box in form.inputs if box.get("type") == "checkbox"}
    assert all(box.get("name") == "topics" for box in boxes.values())
    assert list(boxes) == ["spiking", "rl", "diffusion"]  # every topic the config defines
    assert [name for name, box in boxes.items() if box.checked] == ["spiking", "rl"]
    text = form.text_content()
    for title in ("Spiking neural networks", "Reinforcement learning", "Diffusion models"):
        assert title in text
    assert "keywords: reinforcement learning, RL, bandit, policy gradient" in text and "not: trading" in text
    assert values["schedule"] == ["daily 07:00"] and values["pause"] == [""]
    assert len(values["csrf"]) == 1 and values["csrf"][0]


def test_a_form_not_from_this_site_is_refused_and_changes_nothing(tmp_path: Path, web_server: Any) -> None:
    served = web_server.start(web_config(tmp_path, web_server.base_url))
    url = preferences_url()
    _, values = form_of(served, url)
    change = {**values, "topics": ["diffusion"], "action": "save"}
    grace_form = SIGNER.timed_token("form", "preferences\0grace@example.org", datetime.now(UTC))
    stale = SIGNER.timed_token("form", f"preferences\0{ADA}", datetime.now(UTC) - timedelta(days=2))
    refused = [
        served.client.post(url, data={k: v for k, v in change.items() if k != "csrf"}),  # no token
        submit(served, url, {**change, "csrf": ["garbage"]}),
        submit(served, url, {**change, "csrf": [grace_form]}),  # another reader's form
        submit(served, url, {**change, "csrf": [stale]}),  # a page left open for two days
        served.client.post(url, data=change, headers={"Sec-Fetch-Site": "cross-site"}),
        served.client.post(url, data=change, headers={"Sec-Fetch-Site": "same-site"}),
        served.client.post(url, data=change, headers={"Origin": "https://evil.example"}),
        submit(served, url, {**change, "action": "unsubscribe"}, **{"Sec-Fetch-Site": "cross-site"}),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "Nothing was changed" in response.text
    assert readers(tmp_path) == []
    # The same form from the page itself is accepted (Origin: null is what no-referrer pages send).
    ok = served.client.post(url, data=change, headers={"Origin": "null"})
    assert ok.status_code == 200 and "Topics: Diffusion models." in ok.text
    assert readers(tmp_path)[0][2] == '["diffusion"]'


def test_chosen_topics_and_schedule_are_what_the_next_send_and_status_follow(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server))
    served = web_server.start(config)
    url = preferences_url()
    _, values = form_of(served, url)
    saved = submit(
        served, url, {**values, "topics": ["rl"], "schedule": ["weekly fri 08:00"], "action": "save"}
    )
    assert saved.status_code == 200, saved.text
    changes = [" ".join(li.text_content().split()) for li in lxml.html.fromstring(saved.text).iter("li")]
    assert changes == ["Topics: Reinforcement learning.", "Schedule: weekly fri 08:00."]
    # The page shows the choices as they now stand.
    _, now = form_of(served, url)
    assert now["topics"] == ["rl"] and now["schedule"] == ["weekly fri 08:00"]
    # Saving the same again changes nothing, and says so.
    same = submit(served, url, {**now, "action": "save"})
    assert "Nothing changed" in same.text

    status = digest(config, "status", env=None)
    assert status.returncode == 0, status.stderr
    ada_row = next(line for line in status.stdout.splitlines() if line.startswith(ADA))
    assert "rl (web)" in ada_row and "weekly fri 08:00 (web)" in ada_row
    assert re.search(r"\d{4}-\d\d-\d\d 08:00 UTC", ada_row)  # the next digest, on their schedule

    sent = digest(config, "send")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (message,) = smtp_server.handler.to(ADA)
    assert set(text_titles(body_text(message))) == RL  # no spiking entries: not chosen any more
    assert "follows: Reinforcement learning." in " ".join(body_text(message).split())
    (to_grace,) = smtp_server.handler.to("Grace@example.org")  # the config's choice, untouched
    assert "Consistency Distillation" in body_text(to_grace)

    # Back to the config's topics: nothing is recorded as chosen any more.
    _, values = form_of(served, url)
    back = submit(served, url, {**values, "topics": ["spiking", "rl"], "schedule": [""], "action": "save"})
    assert back.status_code == 200
    assert readers(tmp_path)[0][2:4] == (None, None)


def test_an_invalid_schedule_or_topic_is_refused_with_the_reason_and_changes_nothing(
    tmp_path: Path, web_server: Any
) -> None:
    served = web_server.start(web_config(tmp_path, web_server.base_url))
    url = preferences_url()
    _, values = form_of(served, url)
    cases = [
        ({"schedule": ["weekly funday 08:00"]}, "unknown day"),  # the same words as `check`
        ({"schedule": ["daily 25:00"]}, "Schedule:"),
        ({"schedule": ["every 5m"]}, "more than one digest an hour"),
        ({"schedule": ["cron */5 * * * *"]}, "more than one digest an hour"),
        ({"topics": []}, "Choose at least one topic"),
        ({"topics": ["rl", "no-such-topic"]}, "does not have"),
        ({"pause": ["52"]}, "does not offer"),
    ]
    for change, reason in cases:
        response = submit(served, url, {**values, **change, "action": "save"})
        assert response.status_code == 400, (change, response.status_code)
        assert reason in response.text and "Nothing was changed" in response.text, response.text
        assert "<script" not in response.text
    assert readers(tmp_path) == []
    # What the reader typed is escaped, never markup.
    hostile = submit(served, url, {**values, "schedule": ['<script>alert(1)</script>"'], "action": "save"})
    assert hostile.status_code == 400 and "<script>alert" not in hostile.text


def test_a_pause_and_unsubscribing_then_subscribing_again_are_followed_by_send_status_and_check(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server))
    served = web_server.start(config)
    url = preferences_url()
    _, values = form_of(served, url)
    paused = submit(served, url, {**values, "pause": ["2"], "action": "save"})
    assert paused.status_code == 200 and "Paused until" in paused.text
    status = digest(config, "status")
    assert re.search(r"ada@example\.org .*paused until \d{4}-\d\d-\d\d \d\d:\d\d UTC", status.stdout), (
        status.stdout
    )
    first = digest(config, "send")
    assert first.returncode == 0 and smtp_server.handler.to(ADA) == []
    assert "no digest for ada@example.org: paused until" in first.stdout

    # The pause ends early: the next send delivers what came meanwhile.
    _, values = form_of(served, url)
    assert "resume" in [
        o.get("value") for o in lxml.html.fromstring(served.client.get(url).text).iter("option")
    ]
    resumed = submit(served, url, {**values, "pause": ["resume"], "action": "save"})
    assert "Pause ended" in resumed.text
    assert digest(config, "send").returncode == 0
    assert len(smtp_server.handler.to(ADA)) == 1

    # Unsubscribe from the preferences page; check notes it; re-subscribe; the next digest comes.
    _, values = form_of(served, url)
    gone = submit(served, url, {**values, "action": "unsubscribe"})
    assert gone.status_code == 200 and "Unsubscribed" in gone.text
    checked = digest(config, "check")
    assert checked.returncode == 0
    assert re.search(
        r"note: ada@example\.org unsubscribed \(web, at [^)]+\): still in the config", checked.stdout
    )
    status = digest(config, "status")
    assert re.search(
        r"ada@example\.org .*unsubscribed \(web, at \d{4}-\d\d-\d\d \d\d:\d\d UTC\)", status.stdout
    )
    add_entries(tmp_path, "Policy gradient methods revisited")
    assert digest(config, "send").returncode == 0
    assert len(smtp_server.handler.to(ADA)) == 1  # nothing while unsubscribed

    _, values = form_of(served, url)  # the page now offers "Subscribe again"
    assert values.keys() == {"csrf"}
    back = submit(served, url, {**values, "action": "resubscribe"})
    assert back.status_code == 200 and "Subscribed again" in back.text
    assert "unsubscribed" not in digest(config, "check").stdout
    assert digest(config, "send").returncode == 0
    later = smtp_server.handler.to(ADA)
    assert len(later) == 2 and text_titles(body_text(later[-1])) == ["Policy gradient methods revisited"]


def test_a_digest_waiting_in_the_outbox_is_not_sent_while_its_reader_is_paused(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    # Every attempt of the first send fails (3 in the run), the next would succeed.
    smtp_server.handler.faults[ADA] = ["451 4.3.0 try later"] * 3 + [None]
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server))
    first = digest(config, "send")
    assert first.returncode == 3, first.stdout + first.stderr  # ada's digest waits for a retry
    served = web_server.start(config)
    url = preferences_url()
    _, values = form_of(served, url)
    paused = submit(served, url, {**values, "pause": ["1"], "action": "save"})
    assert paused.status_code == 200 and "Paused until" in paused.text
    ((until,),) = [(row[4],) for row in readers(tmp_path)]
    retry = digest(config, "send", "--retry-now", "--no-fetch")
    assert smtp_server.handler.to(ADA) == [], retry.stdout
    with state_db(tmp_path) as db:
        ((state, error),) = db.execute(
            "select state, last_error from deliveries where subscriber = ?", (ADA,)
        )
    until_utc = datetime.fromisoformat(until).replace(tzinfo=UTC) if isinstance(until, str) else until
    assert state == "failed" and error == f"not sent: the reader paused until {until_utc:%Y-%m-%d %H:%M} UTC"
    assert smtp_server.handler.attempts[ADA] == 3  # never offered to the server again


def test_withdrawn_names_readers_paused_now_and_only_while_paused(tmp_path: Path) -> None:
    from pipeline.run.audience import withdrawn
    from pipeline.store import Store

    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    with Store(f"sqlite:///{tmp_path / 'digest.db'}") as store:
        store.record_reader_choices(ADA, now, paused_until=now + timedelta(days=7))
        store.record_reader_choices("grace@example.org", now, paused_until=now - timedelta(minutes=1))
        store.record_reader_choices("bob@example.org", now, paused_until=now + timedelta(days=7))
        store.unsubscribe_reader("bob@example.org", now - timedelta(days=1))
        gone = withdrawn(store, ["Ada@Example.org", "grace@example.org", "bob@example.org", "x@y.org"], now)
        assert gone == {
            "Ada@Example.org": "not sent: the reader paused until 2026-12-13 12:00 UTC",
            "bob@example.org": "not sent: the reader unsubscribed (web, at 2026-12-05 12:00 UTC)",
        }
        assert withdrawn(store, [ADA], now + timedelta(days=8)) == {}  # the pause is over
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        store.record_reader_choices("eve@example.org", now, paused_until=tomorrow)
        assert list(withdrawn(store, ["eve@example.org"])) == ["eve@example.org"]  # by default: now
