"""Concurrent and crashing senders: each digest still goes out once (or, in RFC 1047's window, twice
with the same Message-ID).

Each send is a real `digest send` process, killed at chosen moments; the SMTP server on
127.0.0.1 stalls where the test needs it to.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from conftest import (
    ONE_PAPER_FEED,
    SmtpHandler,
    SmtpServer,
    delivery_rows,
    delivery_states,
    many,
    send_process,
    smtp_section,
    start_smtp,
    wait_for,
)


def test_two_concurrent_sends_deliver_each_digest_once(tmp_path: Path, smtp_server: SmtpServer) -> None:
    config = many(tmp_path, 100, smtp_section(smtp_server))
    first, second = send_process(config), send_process(config)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    counts = Counter(rcpt for _, (rcpt,) in smtp_server.handler.envelopes)
    assert len(counts) == 100 and set(counts.values()) == {1}


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


def _pending_rows(tmp_path: Path) -> int:
    try:
        return len(delivery_rows(tmp_path))
    except sqlite3.OperationalError:
        return 0


def test_crash_before_the_outbox_commit_loses_nothing(tmp_path: Path, smtp_server: SmtpServer) -> None:
    # The feed is a FIFO that never gets written: the process is stuck fetching, before any commit.
    config = many(tmp_path, 5, smtp_section(smtp_server))
    feed = tmp_path / "feed.xml"
    feed.unlink()
    os.mkfifo(feed)
    process = send_process(config)
    time.sleep(1.0)
    _kill(process)
    assert _pending_rows(tmp_path) == 0 and smtp_server.handler.messages == []
    feed.unlink()
    feed.write_text(ONE_PAPER_FEED)
    again = send_process(config)
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
        process = send_process(config)
        wait_for(lambda: _pending_rows(tmp_path) == 5 and handler.peers != set())
        _kill(process)
        assert set(delivery_states(tmp_path).values()) == {"sending"}
        again = send_process(config)  # the dead holder's claim is taken over at once
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
        process = send_process(config)
        wait_for(lambda: len(handler.to("user2@example.org")) == 1)
        _kill(process)
        again = send_process(config)
        out = again.communicate(timeout=60)
        assert again.returncode == 0, out
        counts = Counter(r for _, (r,) in handler.envelopes)
        assert counts == Counter({**{f"user{i}@example.org": 1 for i in range(5)}, "user2@example.org": 2})
        first, second = handler.to("user2@example.org")
        assert first["Message-ID"] == second["Message-ID"]
    finally:
        controller.stop()
