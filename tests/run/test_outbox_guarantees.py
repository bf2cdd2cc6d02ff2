"""Guarantees of the outbox under broken state and load: copies that may have arrived are
capped, waiting digests are visible and can be sent now, failed ones can be put back, a full
disk stops the sending, and a crash under load repeats at most a few messages.

Real aiosmtpd servers on 127.0.0.1, real SQLite files (one on a small tmpfs), the real CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import (
    SmtpHandler,
    SmtpServer,
    delivery_rows,
    delivery_states,
    free_port,
    many,
    queue_outbox,
    send_process,
    smtp_section,
    start_smtp,
    wait_for,
)

from pipeline.run.outbox import MAX_UNCONFIRMED
from pipeline.run.recorder import MAX_UNRECORDED
from pipeline.store import SentMarker, Store, owner_id
from pipeline.store.leases import holder_is_dead


def test_a_server_that_always_drops_after_data_gets_a_capped_number_of_copies(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # It stores every copy and never says so: each attempt may deliver one more.
    handler = smtp_server.handler
    handler.faults["user0@example.org"] = [("DATA", "ACCEPT-DROP")]
    config = many(tmp_path, 2, smtp_section(smtp_server, retries=3))
    first = cli("--config", config, "send")
    assert first.exit_code == 3, first.output
    assert len(handler.to("user0@example.org")) == 1  # one copy per run, not `retries` copies
    for _ in range(5):
        cli("--config", config, "send", "--retry-now")
    copies = handler.to("user0@example.org")
    assert len(copies) == MAX_UNCONFIRMED and len({m["Message-ID"] for m in copies}) == 1
    (row,) = [r for r in delivery_rows(tmp_path) if r["subscriber"] == "user0@example.org"]
    assert row["state"] == "failed" and "may have arrived" in row["last_error"]
    assert len(handler.to("user1@example.org")) == 1


def test_digests_waiting_for_their_next_attempt_are_shown_and_retry_now_sends_them(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.faults["user1@example.org"] = ["451 4.3.0 try later", "451 4.3.0 try later", None]
    config = many(tmp_path, 2, smtp_section(smtp_server, retries=2))
    assert cli("--config", config, "send").exit_code == 3
    again = cli("--config", config, "send")  # nothing new; user1's digest waits a minute
    assert again.exit_code == 3, again.output
    assert "waiting user1@example.org: next attempt" in again.output and "451 4.3.0" in again.output
    assert "1 waiting in the outbox" in again.output and "nothing new for user1" not in again.output
    status = cli("--config", config, "status")
    assert "user1@example.org" in status.output
    now = cli("--config", config, "send", "--retry-now")
    assert now.exit_code == 0, now.output
    assert "sent user1@example.org" in now.output
    assert delivery_states(tmp_path) == {"user0@example.org": "sent", "user1@example.org": "sent"}


def test_retry_failed_puts_failed_digests_back_with_their_message_id(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    handler = smtp_server.handler
    handler.faults["user1@example.org"] = ["550 5.1.1 no such user", None]
    config = many(tmp_path, 3, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 1
    (failed,) = [r for r in delivery_rows(tmp_path) if r["state"] == "failed"]
    assert cli("--config", config, "send").exit_code == 0  # failed stays failed by itself
    assert handler.to("user1@example.org") == []
    result = cli("--config", config, "send", "--retry-failed", "--subscriber", "user1@example.org")
    assert result.exit_code == 0, result.output
    assert "put 1 failed digest back in the outbox" in result.output
    (message,) = handler.to("user1@example.org")
    assert message["Message-ID"] == failed["message_id"]
    assert [len(handler.to(f"user{i}@example.org")) for i in range(3)] == [1, 1, 1]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class FillsTheDisk(SmtpHandler):
    """After ``after`` accepted messages, fills the disk at ``path`` to the last byte."""

    def __init__(self, path: Path, after: int) -> None:
        super().__init__()
        self.path, self.after = path, after

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) == self.after:
            with (self.path / "filler").open("wb") as filler:
                try:
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
                except OSError:
                    pass
        return reply


def test_a_full_disk_stops_the_sending_and_the_next_send_repeats_at_most_a_few(
    tmp_path: Path, small_disk: Path
) -> None:
    handler = FillsTheDisk(small_disk, after=20)
    controller, port = start_smtp(handler)
    try:
        server = SmtpServer("127.0.0.1", port, handler)
        config = many(
            tmp_path, 150, smtp_section(server), extra_digest=f'database = "{small_disk}/digest.db"'
        )
        started = time.monotonic()
        first = send_process(config)
        out, err = first.communicate(timeout=120)
        took = time.monotonic() - started
        print(f"\ndisk full: {len(handler.messages)} sent before the stop, in {took:.2f}s")
        assert first.returncode == 1, (out, err)
        assert b"cannot record sent digests" in out, (out, err)
        assert len(handler.messages) <= 20 + MAX_UNRECORDED + 2  # stopped at once, not 100 later
        (small_disk / "filler").unlink()
        # The next send (another process: this one's claims are its own until their lease ends)
        again = send_process(config)
        out = again.communicate(timeout=120)
        assert again.returncode == 0, out
    finally:
        controller.stop()
    counts = Counter(rcpt for _, (rcpt,) in handler.envelopes)
    assert set(counts) == {f"user{i}@example.org" for i in range(150)}  # nobody lost
    repeated = sum(n - 1 for n in counts.values())
    print(f"disk full: {repeated} repeated on the next send")
    assert repeated <= MAX_UNRECORDED + 2


FSYNC_LOAD = """
import os, sys, time
path = sys.argv[1]
end = time.monotonic() + float(sys.argv[2])
with open(path, "wb") as f:
    while time.monotonic() < end:
        f.write(os.urandom(1 << 16))
        f.flush()
        os.fsync(f.fileno())
"""


def test_a_crash_under_fsync_load_repeats_at_most_a_few_digests(tmp_path: Path) -> None:
    handler = SmtpHandler()
    controller, port = start_smtp(handler)
    load = [
        subprocess.Popen([sys.executable, "-c", FSYNC_LOAD, str(tmp_path / f"load{i}"), "60"])
        for i in range(2)
    ]
    try:
        config = many(tmp_path, 300, smtp_section(SmtpServer("127.0.0.1", port, handler)))
        process = send_process(config)
        wait_for(lambda: len(handler.messages) >= 60, timeout=60)
        process.kill()
        process.communicate()
        before = len(handler.messages)
        again = send_process(config)
        out = again.communicate(timeout=120)
        assert again.returncode == 0, out
    finally:
        for p in load:
            p.kill()
            p.wait()
        controller.stop()
    counts = Counter(rcpt for _, (rcpt,) in handler.envelopes)
    repeated = sum(n - 1 for n in counts.values())
    print(f"\ncrash under fsync load: killed after {before} messages; {repeated} repeated, 0 lost")
    assert set(counts) == {f"user{i}@example.org" for i in range(300)}
    # At most the acceptances waiting for their commit, and the one message in DATA.
    assert repeated <= MAX_UNRECORDED + 1


def test_a_sender_paused_past_its_lease_cannot_undo_the_taker_s_work(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, 1)
        (mine,) = store.claim(now, lease=timedelta(seconds=1), owner="host-a:1:x", limit=1)
        later = now + timedelta(seconds=5)
        (theirs,) = store.claim(later, lease=timedelta(minutes=10), owner="host-b:2:y", limit=1)
        assert theirs.id == mine.id
        # Host A wakes up (SIGSTOP, a VM pause) and reports what it saw: nothing changes.
        assert store.mark_retry(mine.id, "late", later, "host-a:1:x") is False
        assert store.mark_failed(mine.id, "late", "host-a:1:x") is False
        marker_rows = store.deliveries(["sending"])
        assert [r.id for r in marker_rows] == [mine.id]
        marker = SentMarker(store)
        marker([mine.id], later, "host-a:1:x")
        marker.close()
        assert store.delivery_counts() == {"sending": 1}
        # The holder's own updates go through.
        assert store.mark_retry(theirs.id, "451 later", later, "host-b:2:y") is True
        assert store.delivery_counts() == {"pending": 1}


def test_a_holder_id_tells_apart_processes_that_share_a_host_name_and_pid() -> None:
    me = owner_id()
    host, pid, scope = me.split(":")
    assert host == socket.gethostname() and pid == str(os.getpid()) and scope
    assert not holder_is_dead(me)
    # The same host name and pid in another container (another boot or pid namespace): only
    # its lease can free its claims.
    assert not holder_is_dead(f"{host}:{pid}:otherboot.12345.abcd")
    # An earlier process of this machine that had our pid: gone.
    assert holder_is_dead(f"{host}:{pid}:{scope.rpartition('.')[0]}.00000000")


def test_the_summary_counts_every_digest_left_in_the_outbox(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    # The server is unusable from the first claim on: the digests never claimed wait too.
    server = SmtpServer("127.0.0.1", free_port(), SmtpHandler())  # (nothing listens there)
    config = many(tmp_path, 120, smtp_section(server, timeout="1s", retries=1))
    result = cli("--config", config, "send")
    assert result.exit_code == 3, result.output
    found = re.search(
        r"0 sent, (\d+) pending, 0 failed, 0 retried, (\d+) waiting in the outbox; 0 with nothing new",
        result.output,
    )
    assert found and int(found[1]) + int(found[2]) == 120, result.output
    assert set(delivery_states(tmp_path).values()) == {"pending"}


def test_a_clock_jump_past_the_lease_does_not_claim_again_what_this_sender_holds(tmp_path: Path) -> None:
    # Suspend, an NTP step, Ctrl-Z then fg: our own lease looks expired, but we are sending.
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, 3)
        mine = store.claim(now, lease=timedelta(minutes=10), owner=owner_id(), limit=3)
        later = now + timedelta(minutes=11)
        assert store.claim(later, lease=timedelta(minutes=10), owner=owner_id(), limit=3) == []
        theirs = store.claim(later, lease=timedelta(minutes=10), owner="elsewhere:1:x", limit=3)
        assert sorted(r.id for r in theirs) == sorted(r.id for r in mine)  # another sender may


def test_a_later_run_of_this_process_takes_over_what_an_earlier_run_left_after_its_lease(
    tmp_path: Path,
) -> None:
    # digest run delivers in one process for months: a run that stopped (a full disk) must not
    # leave its rows claimed until a restart, nor may a live run's rows look abandoned.
    earlier, later = f"{owner_id()}.aaaaaa", f"{owner_id()}.bbbbbb"
    assert not holder_is_dead(earlier)  # this process: alive
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, 2)
        left = store.claim(now, lease=timedelta(minutes=10), owner=earlier, limit=2)
        assert (
            store.claim(now + timedelta(minutes=1), lease=timedelta(minutes=10), owner=later, limit=2) == []
        )
        taken = store.claim(now + timedelta(minutes=11), lease=timedelta(minutes=10), owner=later, limit=2)
        assert sorted(r.id for r in taken) == sorted(r.id for r in left)
