"""Delivery you can trust: the outbox, retries by the RFC, no lost and no doubled digests.

Every test talks to a real aiosmtpd server on 127.0.0.1 that scripts faults (see
conftest.SmtpHandler) and keeps state in a real SQLite file.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import Result
from conftest import SmtpHandler, SmtpServer, body_text, free_port, smtp_section, start_smtp
from sqlalchemy import event

from pipeline import run
from pipeline.config import load_settings
from pipeline.deliver import SmtpTransport, is_transient
from pipeline.models import OutgoingMessage
from pipeline.store import QueuedDigest, Store, owner_id, utcnow

FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>One paper</title><link>https://example.org/</link>
<description>x</description>
<item><title>Spiking neural networks for everyone</title><link>https://example.org/snn</link>
<guid>https://example.org/snn</guid><description>An SNN paper.</description>
<pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item>
</channel></rss>
"""


def many(tmp_path: Path, n: int, smtp: str, *, extra_digest: str = "") -> Path:
    """A config with n subscribers, each getting a one-entry digest."""
    (tmp_path / "feed.xml").write_text(FEED)
    subscribers = "".join(
        f'[[subscribers]]\nemail = "user{i}@example.org"\ntopics = ["snn"]\n\n' for i in range(n)
    )
    config = tmp_path / "digest.toml"
    config.write_text(
        f'[digest]\ntitle = "T"\nlookback = "3650d"\n{extra_digest}\n'
        '[[feeds]]\nname = "one"\nurl = "feed.xml"\n\n'
        '[topics.snn]\nkeywords = ["SNN"]\n\n'
        f"{subscribers}{smtp}"
    )
    return config


def states(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        return dict(db.execute("select subscriber, state from deliveries"))


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from deliveries order by id")]


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (421, True),
        (450, True),
        (451, True),
        (452, True),
        (552, True),
        (550, False),
        (551, False),
        (553, False),
        (554, False),
        (501, False),
    ],
)
def test_reply_classification(code: int, transient: bool) -> None:
    # Mailman 3's rule: 4xx and 552 are temporary, every other 5xx permanent.
    assert is_transient(code) is transient


@pytest.mark.parametrize(
    "fault",
    [
        "421 4.3.2 service shutting down",
        "451 4.3.0 try again later",
        "452 4.2.2 mailbox full",
        ("DATA", "451 4.3.0 local error"),
        ("DATA", "452 4.3.1 insufficient storage"),
        ("DATA", "421 4.3.2 closing"),
        "552 5.2.2 mailbox full",
        ("DATA", "552 5.3.4 message too big for now"),
        ("RCPT", "DROP"),
        ("DATA", "DROP"),
        ("DATA", "STALL"),
    ],
)
def test_a_transient_fault_is_retried_within_the_run(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, fault: Any
) -> None:
    handler = smtp_server.handler
    handler.stall = 1.5
    handler.faults["user1@example.org"] = [fault, None]
    config = many(tmp_path, 3, smtp_section(smtp_server, timeout="0.5s"))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "3 sent, 0 pending, 0 failed, 1 retried" in result.output
    assert "sent user1@example.org: 1 entries (after 2 attempts)" in result.output
    assert sorted(rcpt for _, (rcpt,) in handler.envelopes) == [f"user{i}@example.org" for i in range(3)]
    assert set(states(tmp_path).values()) == {"sent"}


@pytest.mark.parametrize("reply", ["421 4.3.2 busy", "451 4.7.1 greylisted", "452 4.3.1 too many sessions"])
def test_transient_faults_at_mail_are_retried(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, reply: str
) -> None:
    smtp_server.handler.mail_faults.extend([reply, reply])
    config = many(tmp_path, 3, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert len(smtp_server.handler.messages) == 3


def test_the_accepted_then_dropped_window_gives_a_duplicate_with_the_same_message_id(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # RFC 1047: the server stored it, the client never heard the 250. The only duplicate allowed.
    smtp_server.handler.faults["user0@example.org"] = [("DATA", "ACCEPT-DROP"), None]
    config = many(tmp_path, 2, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    copies = smtp_server.handler.to("user0@example.org")
    assert len(copies) == 2 and copies[0]["Message-ID"] == copies[1]["Message-ID"]
    assert len(smtp_server.handler.to("user1@example.org")) == 1


@pytest.mark.parametrize(
    "fault",
    [
        "550 5.1.1 no such user",
        "554 5.7.1 rejected",
        ("DATA", "554 5.6.0 content rejected"),
        "553 5.1.3 bad address",
    ],
)
def test_a_permanent_fault_fails_at_once_and_is_named(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, fault: Any
) -> None:
    smtp_server.handler.faults["user1@example.org"] = [fault]
    config = many(tmp_path, 3, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    reply = fault if isinstance(fault, str) else fault[1]
    assert f"failed user1@example.org: {reply}" in result.output
    assert smtp_server.handler.attempts["user1@example.org"] == 1  # not retried
    assert states(tmp_path) == {
        "user0@example.org": "sent",
        "user1@example.org": "failed",
        "user2@example.org": "sent",
    }
    status = cli("--config", config, "status")
    assert "failed user1@example.org (attempts 1, next" in status.output and reply in status.output


def test_persistent_transient_faults_back_off_then_give_up(tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.faults["user0@example.org"] = ["451 4.3.0 try later"]
    config = many(tmp_path, 1, smtp_section(smtp_server, give_up_after="3h"))
    settings = load_settings(config)
    now = utcnow()
    with Store(settings.digest.database_url) as store:
        first = run.send(settings, store, clock=lambda: now)
        assert first.exit_code == 3 and first.count("pending") == 1
        (row,) = rows(tmp_path)
        assert row["state"] == "pending" and row["attempts"] == 1
        assert smtp_server.handler.attempts["user0@example.org"] == 3  # retries within the run
        # Not due yet: nothing happens.
        assert run.deliver_due(settings, store, clock=lambda: now + timedelta(seconds=30)).outcomes == []
        waits = []
        for hours in range(1, 8):
            later = now + timedelta(hours=hours)
            report = run.deliver_due(settings, store, clock=lambda later=later: later)
            (row,) = rows(tmp_path)
            waits.append(row["state"])
            if row["state"] == "failed":
                assert report.exit_code == 1
                assert "gave up after" in row["last_error"] and "451 4.3.0 try later" in row["last_error"]
                break
        assert waits[-1] == "failed" and "pending" in waits


def test_backoff_doubles_from_one_minute_to_one_hour(tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.faults["user0@example.org"] = ["451 4.3.0 try later"]
    config = many(tmp_path, 1, smtp_section(smtp_server, retries=1))
    settings = load_settings(config)
    clock = utcnow()
    delays = []
    with Store(settings.digest.database_url) as store:
        run.send(settings, store, clock=lambda: clock)
        for _ in range(9):
            (row,) = rows(tmp_path)
            due = row["next_attempt_at"]
            delays.append(round((_parse(due) - clock).total_seconds() / 60))
            clock = _parse(due)
            run.deliver_due(settings, store, clock=lambda clock=clock: clock)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def _parse(text: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_an_unreachable_server_leaves_everything_pending_then_delivers_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    handler = SmtpHandler()
    port = free_port()
    server = SmtpServer("127.0.0.1", port, handler)
    config = many(tmp_path, 3, smtp_section(server, timeout="1s"))
    result = cli("--config", config, "send")
    assert result.exit_code == 3, result.output
    assert "SMTP server unusable" in result.output and "cannot connect" in result.output
    assert "0 sent, 3 pending, 0 failed" in result.output
    before = {r["subscriber"]: r["message_id"] for r in rows(tmp_path)}
    assert set(states(tmp_path).values()) == {"pending"}
    controller, _ = _start_on(handler, port)
    try:
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            report = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
        assert report.exit_code == 0 and report.count("sent") == 3
        assert {m["To"].addresses[0].addr_spec: m["Message-ID"] for m in handler.messages} == before
    finally:
        controller.stop()


def _start_on(handler: SmtpHandler, port: int, **kwargs: Any) -> Any:
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


def test_one_connection_is_reused_and_connections_run_in_parallel(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 12, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    assert len(smtp_server.handler.peers) == 1
    smtp_server.handler.peers.clear()
    other = tmp_path / "parallel"
    other.mkdir()
    config = many(other, 30, smtp_section(smtp_server, connections=3))
    assert cli("--config", config, "send").exit_code == 0
    assert len(smtp_server.handler.peers) == 3
    assert len(smtp_server.handler.messages) == 42


def test_rate_limits_messages_per_second(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 11, smtp_section(smtp_server, rate=20))
    started = time.monotonic()
    assert cli("--config", config, "send", "--no-fetch").exit_code == 0  # nothing stored yet: no mail
    assert cli("--config", config, "send").exit_code == 0
    assert time.monotonic() - started >= 0.5  # 11 messages at 20/s need at least 0.5 s
    assert len(smtp_server.handler.messages) == 11


def _tls_server(
    tmp_path: Path, *, implicit: bool, handler: SmtpHandler, auth: bool = False
) -> tuple[Any, int, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    kwargs: dict[str, Any] = (
        {"ssl_context": server_ctx} if implicit else {"tls_context": server_ctx, "require_starttls": True}
    )
    if auth:
        kwargs["authenticator"] = _authenticator
        kwargs["auth_require_tls"] = not implicit
        kwargs["auth_required"] = True
    controller, port = start_smtp(handler, server_hostname="localhost", **kwargs)
    return controller, port, ca_file


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"digest"
        and auth_data.password == b"s3cret"
    )
    return AuthResult(success=ok, handled=False)  # handled=False: the server replies 535 itself


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd, implicit TLS
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_a_private_ca_and_login(
    cli: Callable[..., Result], tmp_path: Path, security: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = _tls_server(tmp_path, implicit=security == "tls", handler=handler, auth=True)
    try:
        server = SmtpServer("localhost", port, handler)
        smtp = smtp_section(
            server,
            host="localhost",
            security=security,
            ca_file=str(ca_file),
            username="digest",
            password_env="DIGEST_TEST_SMTP_PASSWORD",
        )
        config = many(tmp_path, 2, smtp)
        monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "s3cret")
        result = cli("--config", config, "send")
        assert result.exit_code == 0, result.output
        assert len(handler.messages) == 2
    finally:
        controller.stop()


def test_an_untrusted_certificate_or_a_wrong_password_loses_nothing(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = _tls_server(tmp_path, implicit=False, handler=handler, auth=True)
    try:
        server = SmtpServer("localhost", port, handler)
        untrusted = many(tmp_path, 2, smtp_section(server, host="localhost", security="starttls"))
        result = cli("--config", untrusted, "send")
        assert result.exit_code == 3, result.output
        assert "TLS failed" in result.output and "CERTIFICATE_VERIFY_FAILED" in result.output
        assert set(states(tmp_path).values()) == {"pending"}

        monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "wrong")
        smtp = smtp_section(
            server,
            host="localhost",
            security="starttls",
            ca_file=str(ca_file),
            username="digest",
            password_env="DIGEST_TEST_SMTP_PASSWORD",
        )
        config = many(tmp_path, 2, smtp)
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            report = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=5))
        assert report.exit_code == 3 and report.unreachable and "login refused: 535" in report.unreachable
        assert set(states(tmp_path).values()) == {"pending"} and handler.messages == []
    finally:
        controller.stop()


def test_list_unsubscribe_one_click_with_a_base_url(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(
        tmp_path, 1, smtp_section(smtp_server), extra_digest='base_url = "https://digest.example.net"'
    )
    assert cli("--config", config, "send").exit_code == 0
    (message,) = smtp_server.handler.messages
    assert str(message["List-Unsubscribe"]).strip() == (
        "<https://digest.example.net/unsubscribe?email=user0%40example.org>, "
        "<mailto:digest@example.net?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "T <t.example.net>"
    assert message["Message-ID"].endswith("@example.net>")


def test_fault_run_loses_nothing_and_doubles_only_the_rfc1047_window(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """300 digests (DIGEST_FAULT_RUN=1000 for the full run), a fault for every fifth, 3 connections."""
    handler = smtp_server.handler
    handler.stall = 1.5
    n = int(os.environ.get("DIGEST_FAULT_RUN", "300"))
    kinds: list[tuple[str, list[Any]]] = [
        ("retried", ["451 4.3.0 later", None]),
        ("retried", ["421 4.3.2 closing", None]),
        ("retried", [("DATA", "452 4.3.1 full"), None]),
        ("retried", ["552 5.2.2 over quota", None]),
        ("retried", [("RCPT", "DROP"), None]),
        ("retried", [("DATA", "STALL"), None]),
        ("duplicate", [("DATA", "ACCEPT-DROP"), None]),
        ("failed", ["550 5.1.1 unknown user"]),
        ("failed", [("DATA", "554 5.7.1 spam")]),
        ("pending", ["451 4.3.0 still later"]),
    ]
    expected: dict[str, str] = {}
    for i in range(n):
        address = f"user{i}@example.org"
        if i % 5 == 0:
            kind, script = kinds[(i // 5) % len(kinds)]
            handler.faults[address] = script
            expected[address] = kind
        else:
            expected[address] = "clean"
    config = many(tmp_path, n, smtp_section(smtp_server, timeout="1s", connections=3))
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        report = run.send(settings, store)
    final = states(tmp_path)
    arrived = Counter(rcpt for _, (rcpt,) in handler.envelopes)
    ids: dict[str, set[str]] = {}
    for message in handler.messages:
        ids.setdefault(message["To"].addresses[0].addr_spec, set()).add(message["Message-ID"])
    lost = [a for a, kind in expected.items() if kind in ("clean", "retried", "duplicate") and not arrived[a]]
    doubled = [a for a, count in arrived.items() if count > 1]
    wanted_state = {
        "clean": "sent",
        "retried": "sent",
        "duplicate": "sent",
        "failed": "failed",
        "pending": "pending",
    }
    misclassified = [a for a, kind in expected.items() if final[a] != wanted_state[kind]]
    print(
        f"\nfault run: {n} digests, {sum(k != 'clean' for k in expected.values())} faults: "
        f"{len(lost)} lost, {sum(c - 1 for c in arrived.values())} duplicated "
        f"({sum(k == 'duplicate' for k in expected.values())} accepted-then-dropped), "
        f"{len(misclassified)} misclassified; {report.count('sent')} sent, {report.count('failed')} failed, "
        f"{report.count('pending')} pending, {report.retried} retried"
    )
    assert lost == [] and misclassified == []
    assert sorted(doubled) == sorted(a for a, k in expected.items() if k == "duplicate")
    assert all(len(ids[a]) == 1 for a in doubled)  # a duplicate always carries the same Message-ID
    assert report.count("sent") == sum(k in ("clean", "retried", "duplicate") for k in expected.values())
    assert report.exit_code == 1


def _send_process(config: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_concurrent_sends_deliver_each_digest_once(tmp_path: Path, smtp_server: SmtpServer) -> None:
    config = many(tmp_path, 100, smtp_section(smtp_server))
    first, second = _send_process(config), _send_process(config)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    counts = Counter(rcpt for _, (rcpt,) in smtp_server.handler.envelopes)
    assert len(counts) == 100 and set(counts.values()) == {1}


def test_senders_opening_a_new_database_at_once_all_get_in(tmp_path: Path) -> None:
    # Switching a new file to WAL from two connections at once can deadlock, and SQLite answers
    # "database is locked" without waiting: one send of two started together used to fail so.
    # Threads meet here far more tightly than processes do (the race hit ~3% of rounds).
    failures: list[Exception] = []

    def open_store(url: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            Store(url).close()
        except Exception as exc:  # every failure is reported below
            failures.append(exc)

    for round_ in range(200):
        url = f"sqlite:///{tmp_path}/{round_}/digest.db"
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=open_store, args=(url, barrier)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    with closing(sqlite3.connect(tmp_path / "0" / "digest.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _outbox(store: Store, rows: int) -> datetime:
    """``rows`` pending deliveries (without entries) in the outbox; returns their due time."""
    now = utcnow()
    store.enqueue(
        [
            QueuedDigest(f"u{i}@example.org", f"<{i}@test>", now, now + timedelta(days=1), (), (), "{}")
            for i in range(rows)
        ]
    )
    return now


def test_rows_accepted_close_together_share_a_commit_and_none_is_lost(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = _outbox(store, 300)
        claimed = store.claim(now, lease=timedelta(minutes=5), owner=owner_id(), limit=300)
        begun: list[float] = []

        def began(conn: Any) -> None:
            begun.append(time.monotonic())

        event.listen(store.engine, "begin", began)
        started = time.monotonic()
        recorder = run.SentRecorder(store, utcnow)
        for row in claimed:
            recorder.add(row.id)
            time.sleep(0.0002)  # a fast server: a 250 every 0.2 ms or so
        recorder.close()
        elapsed = time.monotonic() - started
        event.remove(store.engine, "begin", began)
        assert store.delivery_counts() == {"sent": 300}
    # Grouped: commits (fsyncs) 2 ms apart, not one per message or two (~4 a millisecond). The
    # bound grows with the time taken, which a loaded machine stretches.
    assert 1 < len(begun) <= elapsed / 0.001 + 2


def test_a_claim_walks_an_index_and_stops_at_its_limit(tmp_path: Path) -> None:
    # Collecting and sorting every due row at each claim made each claim cost more the more
    # digests were due: quadratic over a large send.
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = _outbox(store, 100)
        selects: list[tuple[str, Any]] = []

        def executed(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.startswith("SELECT"):
                selects.append((statement, parameters))

        event.listen(store.engine, "before_cursor_execute", executed)
        assert len(store.claim(now, lease=timedelta(minutes=5), owner=owner_id(), limit=10)) == 10
        event.remove(store.engine, "before_cursor_execute", executed)
        with store.engine.connect() as conn:
            plans = {
                statement: " / ".join(
                    row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                )
                for statement, parameters in selects
            }
    (pending,) = [plan for statement, plan in plans.items() if "next_attempt_at <=" in statement]
    assert "USING COVERING INDEX" in pending and "TEMP B-TREE" not in pending, pending
    assert "MULTI-INDEX OR" not in pending, pending


def _wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


def _pending_rows(tmp_path: Path) -> int:
    try:
        return len(rows(tmp_path))
    except sqlite3.OperationalError:
        return 0


def test_crash_before_the_outbox_commit_loses_nothing(tmp_path: Path, smtp_server: SmtpServer) -> None:
    # The feed is a FIFO that never gets written: the process is stuck fetching, before any commit.
    config = many(tmp_path, 5, smtp_section(smtp_server))
    feed = tmp_path / "feed.xml"
    feed.unlink()
    os.mkfifo(feed)
    process = _send_process(config)
    time.sleep(1.0)
    _kill(process)
    assert _pending_rows(tmp_path) == 0 and smtp_server.handler.messages == []
    feed.unlink()
    feed.write_text(FEED)
    again = _send_process(config)
    assert again.wait(timeout=60) == 0
    assert Counter(r for _, (r,) in smtp_server.handler.envelopes) == Counter(
        {f"user{i}@example.org": 1 for i in range(5)}
    )


def test_crash_after_the_outbox_commit_delivers_on_the_next_send(tmp_path: Path) -> None:
    # The server accepts the connection but stalls at MAIL: the digests are committed, none sent.
    handler = SmtpHandler()
    handler.stall = 30
    handler.mail_faults.append("STALL")
    controller, port = start_smtp(handler)
    try:
        config = many(tmp_path, 5, smtp_section(SmtpServer("127.0.0.1", port, handler), timeout="60s"))
        process = _send_process(config)
        _wait_for(lambda: _pending_rows(tmp_path) == 5 and handler.peers != set())
        _kill(process)
        assert set(states(tmp_path).values()) == {"sending"}
        again = _send_process(config)  # the dead holder's claim is taken over at once
        out = again.communicate(timeout=60)
        assert again.returncode == 0, out
        assert Counter(r for _, (r,) in handler.envelopes) == Counter(
            {f"user{i}@example.org": 1 for i in range(5)}
        )
    finally:
        controller.stop()


def test_crash_after_data_repeats_only_that_message_with_the_same_id(tmp_path: Path) -> None:
    # The server stores user2's message and then stalls before its 250; we kill the sender there.
    handler = SmtpHandler()
    handler.stall = 30
    handler.faults["user2@example.org"] = [("DATA", "ACCEPT-STALL"), None]
    controller, port = start_smtp(handler)
    try:
        config = many(tmp_path, 5, smtp_section(SmtpServer("127.0.0.1", port, handler), timeout="60s"))
        process = _send_process(config)
        _wait_for(lambda: len(handler.to("user2@example.org")) == 1)
        _kill(process)
        again = _send_process(config)
        out = again.communicate(timeout=60)
        assert again.returncode == 0, out
        counts = Counter(r for _, (r,) in handler.envelopes)
        assert counts == Counter({**{f"user{i}@example.org": 1 for i in range(5)}, "user2@example.org": 2})
        first, second = handler.to("user2@example.org")
        assert first["Message-ID"] == second["Message-ID"]
    finally:
        controller.stop()


def test_status_lists_pending_deliveries(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.faults["user0@example.org"] = ["451 4.3.0 greylisted"]
    config = many(tmp_path, 2, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 3
    status = cli("--config", config, "status")
    assert "Outbox: 1 pending, 1 sent" in status.output
    assert (
        "pending user0@example.org (attempts 1, next" in status.output
        and "451 4.3.0 greylisted" in status.output
    )


def test_sigterm_finishes_the_message_in_flight_and_returns_the_rest(tmp_path: Path) -> None:
    handler = SmtpHandler()
    handler.stall = 2
    handler.faults["user5@example.org"] = [("DATA", "STALL"), None]
    controller, port = start_smtp(handler)
    try:
        config = many(tmp_path, 20, smtp_section(SmtpServer("127.0.0.1", port, handler), timeout="10s"))
        process = _send_process(config)
        _wait_for(lambda: handler.attempts.get("user5@example.org") == 1)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert time.monotonic() - started < 5
        assert process.returncode == 3, (out, err)
        assert b"SIGTERM: stopping after the messages in flight" in err
        final = states(tmp_path)
        assert [a for a, s in final.items() if s == "sent"] == [f"user{i}@example.org" for i in range(5)]
        assert set(final.values()) == {"sent", "pending"}  # nothing lost, nothing still claimed
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            later = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
        assert later.count("sent") == 15
        assert Counter(r for _, (r,) in handler.envelopes) == Counter(
            {f"user{i}@example.org": 1 for i in range(20)}
        )
    finally:
        controller.stop()


def test_old_finished_digests_are_forgotten_without_any_resend(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 2, smtp_section(smtp_server), extra_digest='retain = "1d"')
    settings = load_settings(config)
    start = utcnow()
    with Store(settings.digest.database_url) as store:
        assert run.send(settings, store, clock=lambda: start).count("sent") == 2
        later = start + timedelta(days=3)
        again = run.send(settings, store, clock=lambda: later)  # fetches, prunes, plans
        assert again.outcomes == []
        assert sorted(again.nothing_new) == ["user0@example.org", "user1@example.org"]
    assert rows(tmp_path) == []  # the sent digests and their taken entries are gone
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        assert db.execute("select count(*) from delivered_entries").fetchone() == (0,)
    assert len(smtp_server.handler.messages) == 2


@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelined_and_plain_transactions_deliver_the_same_bytes(
    tmp_path: Path, smtp_server: SmtpServer, pipelining: bool
) -> None:
    # A line that starts with a dot must survive SMTP's dot-stuffing either way (RFC 5321 4.5.2).
    smtp_server.handler.pipelining = pipelining
    feed = FEED.replace("An SNN paper.", "An SNN paper.\n.hidden line\n..and two dots")
    config = many(tmp_path, 2, smtp_section(smtp_server))
    (tmp_path / "feed.xml").write_text(feed)
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        assert run.send(settings, store).count("sent") == 2
    sent = {m["To"].addresses[0].addr_spec: m for m in smtp_server.handler.messages}
    assert set(sent) == {"user0@example.org", "user1@example.org"}
    for message in sent.values():
        assert ".hidden line" in body_text(message) or ". hidden line" in body_text(message)


@pytest.mark.parametrize("pipelining", [True, False])
def test_lines_starting_with_a_dot_survive_either_transaction(
    tmp_path: Path, smtp_server: SmtpServer, pipelining: bool
) -> None:
    # compose writes no such line (it encodes the dot), but the transport takes any message.
    smtp_server.handler.pipelining = pipelining
    settings = load_settings(many(tmp_path, 1, smtp_section(smtp_server)))
    assert settings.smtp is not None
    body = ".first\r\nmiddle\r\n..two\r\n.\r\n.end"  # (a lone dot would end the data)
    data = f"From: a@example.org\r\nTo: b@example.org\r\nSubject: dots\r\n\r\n{body}".encode()
    transport = SmtpTransport(settings.smtp)
    try:
        transport.send(OutgoingMessage("a@example.org", "b@example.org", "<dots@x>", data))
    finally:
        transport.close()
    (message,) = smtp_server.handler.messages
    assert message.get_payload().replace("\r\n", "\n").rstrip("\n") == body.replace("\r\n", "\n")


def test_a_refused_sender_in_a_pipelined_transaction_is_classified_and_the_next_goes_through(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.mail_faults.append("553 5.1.8 sender rejected")
    config = many(tmp_path, 2, smtp_section(smtp_server))
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        report = run.send(settings, store)
    assert report.count("failed") == 1 and report.count("sent") == 1
    (failed,) = [o for o in report.outcomes if o.status == "failed"]
    assert failed.detail == "553 5.1.8 sender rejected"
