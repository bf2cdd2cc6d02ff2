"""``digest run`` + ``digest serve`` + ``digest send`` as real processes on ONE SQLite database
at the same time, while readers unsubscribe and change their preferences over HTTP, into a
real aiosmtpd: no digest lost, none doubled, and nothing for a reader after their unsubscribe
POST returned.

Twenty subscribers follow one topic on a two-second schedule; a writer adds an entry to the
feed every 0.4 s; the scheduler fetches it every second and serves each subscriber; two
threads start ``digest send`` processes back to back meanwhile. Four readers unsubscribe
(one-click POST) and four change their schedule and topics (the preferences form) at moments
spread over the run. At the end every entry must have reached every subscriber who stayed
exactly once (counted by (subscriber, entry) pairs and by Message-ID), and no digest planned
after a reader's unsubscribe returned may reach them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from conftest import SmtpHandler, body_text, serving_smtp, smtp_section, state_db, wait_for
from web_server import WEB_SECRET, ServeProcess, web_env

from pipeline.web.tokens import Signer

SIGNER = Signer(WEB_SECRET.encode())
SUBSCRIBERS = [f"u{i:02d}@example.org" for i in range(20)]
UNSUBSCRIBING = SUBSCRIBERS[:4]
CHANGING = SUBSCRIBERS[4:8]
ENTRIES = 30
WRITE_EVERY = 0.4  # seconds between new entries
IN_FLIGHT = 5.0  # seconds: a digest claimed before an unsubscribe may still be on the wire
ENTRY_LINK = re.compile(r"https://example\.org/e/(\d+)")

CONFIG = """
[digest]
title = "Side by side"
database = "state/digest.db"
lookback = "3650d"
max_entries = 1000
base_url = "{base_url}"

[[feeds]]
name = "papers"
url = "{feed}"
every = "1s"

[topics.snn]
keywords = ["SNN"]

[topics.other]
keywords = ["nothing-matches-this"]

{subscribers}
{smtp}
"""


class TimedHandler(SmtpHandler):
    """Every accepted message with the time it arrived (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    def _store(self, envelope: Any) -> None:
        with self.lock:
            self.arrived.append(time.monotonic())
        super()._store(envelope)


def feed_xml(count: int) -> str:
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    items = "".join(
        f"<item><title>SNN paper {i}</title><link>https://example.org/e/{i}</link>"
        f"<guid>e-{i}</guid><description>An SNN result, number {i}.</description>"
        f"<pubDate>{stamp}</pubDate></item>"
        for i in range(count)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Papers</title>'
        f"<link>https://example.org/</link><description>x</description>{items}</channel></rss>"
    )


def write_feed(path: Path, count: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(feed_xml(count), encoding="utf-8")
    temporary.replace(path)  # (a fetch never reads half a file)


def entries_of(message: EmailMessage) -> set[int]:
    return {int(n) for n in ENTRY_LINK.findall(body_text(message))}


def test_run_serve_and_send_side_by_side_lose_nothing_double_nothing(tmp_path: Path, web_server: Any) -> None:
    started = time.monotonic()
    feed = tmp_path / "papers.xml"
    write_feed(feed, 1)
    subscribers = "".join(
        f'[[subscribers]]\nemail = "{email}"\ntopics = ["snn"]\nschedule = "every 2s"\n\n'
        for email in SUBSCRIBERS
    )
    handler = TimedHandler()
    with serving_smtp(handler) as smtp:
        config = tmp_path / "digest.toml"
        config.write_text(
            CONFIG.format(
                base_url=web_server.base_url,
                feed=feed,
                subscribers=subscribers,
                smtp=smtp_section(smtp, timeout="30s"),
            ),
            encoding="utf-8",
        )
        served: ServeProcess = web_server.start(config)
        log = tmp_path / "run.log"
        failures: list[str] = []
        unsubscribed: dict[str, tuple[float, datetime]] = {}  # when each POST returned
        stop_sending = threading.Event()

        def writer() -> None:
            for count in range(2, ENTRIES + 1):
                time.sleep(WRITE_EVERY)
                write_feed(feed, count)

        def sender() -> None:
            while not stop_sending.is_set():
                done = subprocess.run(
                    [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send"],
                    capture_output=True,
                    text=True,
                    env=web_env(),
                    timeout=60,
                )
                if done.returncode not in (0, 3):
                    failures.append(f"send exited {done.returncode}: {done.stdout}{done.stderr}")
                stop_sending.wait(1.0)  # (and the scheduler's rounds find new entries too)

        def reader(email: str, delay: float, unsubscribe: bool) -> None:
            time.sleep(delay)
            if unsubscribe:
                url = f"/u/{SIGNER.token('unsubscribe', email)}"
                answer = served.client.post(url, data={"List-Unsubscribe": "One-Click"})
                unsubscribed[email] = (time.monotonic(), datetime.now(UTC))
            else:
                url = f"/p/{SIGNER.token('preferences', email)}"
                page = served.client.get(url).text
                csrf = re.search(r'name="csrf" value="([^"]+)"', page)
                assert csrf is not None
                answer = served.client.post(
                    url,
                    data={
                        "csrf": csrf[1],
                        "topics": ["snn", "other"],
                        "schedule": "every 1h",
                        "action": "save",
                    },
                    headers={"Sec-Fetch-Site": "same-origin"},
                )
            if answer.status_code != 200:
                failures.append(f"{email}: {answer.status_code} {answer.text[-800:]}")

        with log.open("wb") as output:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=web_env(),
            )
            try:
                threads = [threading.Thread(target=writer), threading.Thread(target=sender)]
                threads.append(threading.Thread(target=sender))
                spread = ENTRIES * WRITE_EVERY
                for n, email in enumerate(UNSUBSCRIBING + CHANGING):
                    delay = 1.0 + spread * (n % 4) / 4 + 0.3 * (n // 4)
                    threads.append(
                        threading.Thread(target=reader, args=(email, delay, email in UNSUBSCRIBING))
                    )
                for thread in threads:
                    thread.start()
                threads[0].join()  # the last entry is written
                for thread in threads[3:]:
                    thread.join()
                stop_sending.set()
                threads[1].join()
                threads[2].join()
                # One last send, then the scheduler's next round: everything is out.
                subprocess.run(
                    [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send"],
                    env=web_env(),
                    capture_output=True,
                    timeout=60,
                    check=True,
                )

                def settled() -> bool:
                    with state_db(tmp_path) as db:
                        busy = db.execute(
                            "select count(*) from deliveries where state in ('pending', 'sending')"
                        ).fetchone()[0]
                    return busy == 0

                wait_for(settled, timeout=20)
                time.sleep(2.5)  # (a scheduled round after the last send finds nothing new)
                wait_for(settled, timeout=20)
            finally:
                daemon.terminate()
                daemon.wait(timeout=20)
        run_log = log.read_text()
        assert daemon.returncode == 0, run_log
        assert failures == [], failures

        with state_db(tmp_path) as db:
            rows = {
                mid: (subscriber, state, datetime.fromisoformat(created).replace(tzinfo=UTC), error)
                for mid, subscriber, state, created, error in db.execute(
                    "select message_id, subscriber, state, created_at, last_error from deliveries"
                )
            }
        messages = list(zip(handler.messages, handler.arrived, strict=True))
        # 0 duplicated: every Message-ID once, every (subscriber, entry) pair once.
        ids = Counter(str(m["Message-ID"]) for m, _ in messages)
        assert [mid for mid, n in ids.items() if n > 1] == []
        pairs = Counter((str(m["To"]), entry) for m, _ in messages for entry in entries_of(m))
        assert [pair for pair, n in pairs.items() if n > 1] == []
        # Every message is an outbox row marked sent, and every sent row arrived.
        assert set(ids) == {mid for mid, row in rows.items() if row[1] == "sent"}
        # 0 lost: every entry reached every subscriber who did not unsubscribe.
        for email in SUBSCRIBERS:
            if email in UNSUBSCRIBING:
                continue
            got = {entry for (to, entry) in pairs if to == email}
            assert got == set(range(ENTRIES)), f"{email} is missing {sorted(set(range(ENTRIES)) - got)}"
        # Nothing after an unsubscribe returned: no digest planned later reaches them, and none
        # arrives later than a digest already on its way could.
        in_flight = 0
        for email, (returned, returned_at) in unsubscribed.items():
            for message, arrived in messages:
                if str(message["To"]) != email or arrived <= returned:
                    continue
                _, _, created, _ = rows[str(message["Message-ID"])]
                assert created <= returned_at, f"{email}: a digest planned after they unsubscribed"
                assert arrived - returned < IN_FLIGHT, f"{email}: a digest {arrived - returned:.1f}s later"
                in_flight += 1
        assert set(unsubscribed) == set(UNSUBSCRIBING)
        withdrawn = [row for row in rows.values() if row[1] == "failed"]
        assert all("the reader unsubscribed" in (row[3] or "") for row in withdrawn), withdrawn
        by_run = len(re.findall(r"digest to=\S+ entries=\d+ sent", run_log))
        assert 0 < by_run < len(messages)  # the scheduler sent some, the send processes the others
        elapsed = time.monotonic() - started
        print(
            f"\nside by side: {len(messages)} digests ({by_run} by digest run), "
            f"{sum(pairs.values())} (subscriber, entry) pairs, "
            f"{len(withdrawn)} withdrawn, {in_flight} already in flight at an unsubscribe; "
            f"{elapsed:.1f}s"
        )
        assert elapsed < 60
