"""deliver_due across runs: transient faults back off (one minute doubling to an hour) until
``give_up_after``; and the fault run: hundreds of digests, a fault for every fifth, none lost,
only RFC 1047's window doubled.

Every test talks to a real aiosmtpd server on 127.0.0.1 that scripts faults (see
conftest.SmtpHandler) and keeps state in a real SQLite file.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import SmtpServer, delivery_rows, delivery_states, many, smtp_section

from pipeline import run
from pipeline.config import load_settings
from pipeline.store import Store, utcnow


def test_persistent_transient_faults_back_off_then_give_up(tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.faults["user0@example.org"] = ["451 4.3.0 try later"]
    config = many(tmp_path, 1, smtp_section(smtp_server, give_up_after="3h"))
    settings = load_settings(config)
    now = utcnow()
    with Store(settings.digest.database_url) as store:
        first = run.send(settings, store, clock=lambda: now)
        assert first.exit_code == 3 and first.count("pending") == 1
        (row,) = delivery_rows(tmp_path)
        assert row["state"] == "pending" and row["attempts"] == 1
        assert smtp_server.handler.attempts["user0@example.org"] == 3  # retries within the run
        # Not due yet: nothing happens.
        assert run.deliver_due(settings, store, clock=lambda: now + timedelta(seconds=30)).outcomes == []
        waits = []
        for hours in range(1, 8):
            later = now + timedelta(hours=hours)
            report = run.deliver_due(settings, store, clock=lambda later=later: later)
            (row,) = delivery_rows(tmp_path)
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
            (row,) = delivery_rows(tmp_path)
            due = row["next_attempt_at"]
            delays.append(round((_parse(due) - clock).total_seconds() / 60))
            clock = _parse(due)
            run.deliver_due(settings, store, clock=lambda clock=clock: clock)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def _parse(text: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)


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
        ("unconfirmed", [("DATA", "STALL"), None]),
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
        # A message whose connection was lost after its data is tried again only later (the
        # server may have it): this is that later attempt.
        later = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
    final = delivery_states(tmp_path)
    arrived = Counter(rcpt for _, (rcpt,) in handler.envelopes)
    ids: dict[str, set[str]] = {}
    for message in handler.messages:
        ids.setdefault(message["To"].addresses[0].addr_spec, set()).add(message["Message-ID"])
    delivered = ("clean", "retried", "unconfirmed", "duplicate")
    lost = [a for a, kind in expected.items() if kind in delivered and not arrived[a]]
    doubled = [a for a, count in arrived.items() if count > 1]
    wanted_state = {
        "clean": "sent",
        "retried": "sent",
        "unconfirmed": "sent",
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
        f"{report.count('pending')} pending, {report.retried} retried; later {later.count('sent')} sent"
    )
    assert lost == [] and misclassified == []
    assert sorted(doubled) == sorted(a for a, k in expected.items() if k == "duplicate")
    assert all(len(ids[a]) == 1 for a in doubled)  # a duplicate always carries the same Message-ID
    assert report.count("sent") == sum(k in ("clean", "retried") for k in expected.values())
    assert later.count("sent") == sum(k in ("unconfirmed", "duplicate") for k in expected.values())
    assert report.exit_code == 1
