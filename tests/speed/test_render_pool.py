"""Render helpers: the same messages as rendering here, and nothing lost when one dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import BASE_CONFIG, DATA, ROOT, SmtpHandler, SmtpServer, serving_smtp, smtp_section
from samples import HOSTILE_ITEMS, sample_config, sample_digests

from pipeline.errors import RenderError
from pipeline.models import Digest, Match, OutgoingMessage
from pipeline.speed.render_pool import MIN_SUBSCRIBERS, RenderPool, pool_size

_LOG = re.compile(r"^\d{4}-\d\d-\d\dT")  # a log line (they go where logging was set up)


def _comparable(results: list[Any]) -> list[Any]:
    return [f"RenderError: {r}" if isinstance(r, RenderError) else r for r in results]


def test_helpers_render_exactly_what_this_process_renders(tmp_path: Path) -> None:
    # ada's digest fails to render (her subject template meets an undefined name): per digest.
    # kai's own timezone puts his digest on the day before (the helper is sent few subscribers).
    folder = tmp_path / "my-templates"
    folder.mkdir()
    (folder / "subject.txt.j2").write_text(
        "{% if subscriber.email == 'ada@example.org' %}{{ nope.nothing }}{% endif %}{{ total }} new"
    )
    kai = '\n[[subscribers]]\nemail = "kai@example.org"\ntopics = ["rl"]\ntimezone = "Pacific/Honolulu"\n'
    settings = sample_config(tmp_path, digest=f'templates = "{folder}"', extra=kai)
    digests = list(sample_digests(settings, items=HOSTILE_ITEMS).values())
    assert len(digests) >= 4 and "kai@example.org" in [d.subscriber for d in digests]
    expected = _comparable(RenderPool(settings).messages(digests))
    assert sum(isinstance(r, str) for r in expected) == 1  # ada's error; the others are messages

    with closing(RenderPool(settings, children=1)) as rendering:
        assert len(rendering.children) == 1
        rendering.plan(digests[1:])  # the first is not planned: asked for anyway, it is rendered too
        asked = list(reversed(digests))  # and out of the planned order
        got = _comparable(rendering.messages(asked))
        assert rendering.children[0].dead is None  # the helper did the work, nothing fell back
    assert got == list(reversed(expected))


def _retitled(digest: Digest) -> Digest:
    """The digest with every entry a new object of the same id and a changed title."""

    def retitled(m: Match) -> Match:
        return replace(m, entry=replace(m.entry, title=f"{m.entry.title} (v2)"))

    sections = tuple(replace(s, matches=tuple(map(retitled, s.matches))) for s in digest.sections)
    return replace(digest, sections=sections, message_id=digest.message_id + "v2")


def test_a_helper_is_sent_each_entry_once_and_again_only_when_it_changed(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    digests = list(sample_digests(settings, items=HOSTILE_ITEMS).values())
    assert len(digests) >= 3
    changed = _retitled(digests[0])
    batches = [digests[:1], digests[1:], [changed]]
    here = RenderPool(settings)
    expected = [_comparable(here.messages(batch)) for batch in batches]
    assert all(isinstance(m, OutgoingMessage) for batch in expected for m in batch)

    with closing(RenderPool(settings, children=1)) as rendering:
        got = [_comparable(rendering.messages(batch)) for batch in batches]
        assert rendering.children[0].dead is None  # every entry sent by id was there
    assert got == expected

    with closing(RenderPool(settings, children=1)) as rendering:  # framing only, never sent
        worker = rendering.children[0]
        sizes = [len(worker.frame(batch)) for batch in ([digests[0]], [digests[0]], [changed])]
    assert sizes[1] < sizes[0] / 2  # the second time its entries went by id
    assert sizes[2] > sizes[0] * 0.9  # changed entries went whole again


def test_a_helper_stopped_and_continued_mid_reply_loses_nothing(tmp_path: Path) -> None:
    # Ctrl-Z and fg (or a profiler) stop and continue the helper: a stop cuts its large pipe
    # writes short. Replies here are ~1 MB, so most of them are cut, several times over.
    settings = sample_config(tmp_path)
    some = list(sample_digests(settings, items=HOSTILE_ITEMS).values())
    digests = [replace(d, message_id=f"<{i}.{d.message_id[1:]}") for i in range(20) for d in some]
    expected = _comparable(RenderPool(settings).messages(digests))

    with closing(RenderPool(settings, children=1)) as rendering:
        pid = rendering.children[0].process.pid
        stopping = threading.Event()

        def stop_and_continue() -> None:
            while not stopping.wait(0.003):
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.002)
                os.kill(pid, signal.SIGCONT)

        got: list[list[Any]] = []
        asking = threading.Thread(target=lambda: got.extend(rendering.messages(digests) for _ in range(3)))
        pester = threading.Thread(target=stop_and_continue)
        pester.start()
        asking.start()
        asking.join(timeout=120)
        stopping.set()
        pester.join()
        if asking.is_alive():  # waiting for the rest of a torn reply, which never comes
            rendering.children[0].process.kill()
            asking.join()
            pytest.fail("a reply never arrived whole")
        assert rendering.children[0].dead is None  # every reply arrived whole
    assert [_comparable(g) for g in got] == [expected] * 3


@pytest.mark.parametrize("broken", ["{% if %}", "{{ nothing_here.at_all }}"])
def test_templates_that_cannot_render_fail_a_send_as_they_do_without_helpers(
    tmp_path: Path, cli: Callable[..., Result], broken: str
) -> None:
    outputs = []
    for workers in (0, 1):
        folder = tmp_path / str(workers)
        templates = folder / "my-templates"
        templates.mkdir(parents=True)
        (templates / "subject.txt.j2").write_text(broken)
        sample_config(
            folder, digest=f'templates = "{templates}"\nrender_workers = {workers}', extra=_readers(300)
        )
        result = cli("--config", folder / "digest.toml", "send")
        said = [
            line for line in result.output.replace(str(folder), "FOLDER").splitlines() if not _LOG.match(line)
        ]
        outputs.append((result.exit_code, said))
    assert outputs[0] == outputs[1]  # the same failures, named the same way, the same exit code
    assert outputs[0][0] != 0 and "subject.txt.j2" in "\n".join(outputs[0][1])


def test_a_helper_never_given_work_is_stopped_without_waiting_for_it(tmp_path: Path) -> None:
    # A send with nothing new for anyone: its helper is still importing; it is not waited for.
    rendering = RenderPool(sample_config(tmp_path), children=1)
    worker = rendering.children[0]
    rendering.close()
    assert worker.process.returncode == -signal.SIGKILL


def test_pool_size(tmp_path: Path) -> None:
    settings = sample_config(tmp_path)
    cores = len(os.sched_getaffinity(0))
    assert pool_size(settings, MIN_SUBSCRIBERS - 1) == 0  # small sends render here
    assert pool_size(settings, MIN_SUBSCRIBERS) == min(4, cores - 1)
    two = settings.model_copy(update={"digest": settings.digest.model_copy(update={"render_workers": 2})})
    assert pool_size(two, MIN_SUBSCRIBERS) == 2
    assert pool_size(two, 1) == 0  # digest run's one-subscriber sends never start helpers
    off = settings.model_copy(update={"digest": settings.digest.model_copy(update={"render_workers": 0})})
    assert pool_size(off, 10_000) == 0


# --- the real command line, with a helper that dies -----------------------------------------------


@dataclass
class SlowHandler(SmtpHandler):
    """Takes 5 ms per message, so that a send of a few hundred lasts a few seconds."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.005)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_smtp() -> Iterator[SmtpServer]:
    with serving_smtp(SlowHandler()) as server:
        yield server


READERS = 600


def _big_config(tmp_path: Path, server: SmtpServer) -> Path:
    text = BASE_CONFIG.format(
        arxiv=DATA / "arxiv-cs.xml", hf=DATA / "hf-papers.xml", blog=DATA / "lab-blog.xml"
    )
    text = text.replace("[digest]\n", "[digest]\nrender_workers = 1\n", 1)
    path = tmp_path / "digest.toml"
    path.write_text(text + "\n" + _readers(READERS) + smtp_section(server, timeout="30s"), encoding="utf-8")
    return path


def _readers(count: int) -> str:
    return "".join(
        f'[[subscribers]]\nemail = "reader{i}@example.org"\ntopics = ["spiking", "rl", "diffusion"]\n\n'
        for i in range(count)
    )


def _send(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "-v", "send"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _helper_of(parent: int, timeout: float = 30) -> int:
    """The pid of ``parent``'s render helper, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                command = (stat.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and b"pipeline.speed.render_child" in command:
                return int(stat.parent.name)
        time.sleep(0.01)
    raise AssertionError("no render helper started")


def _wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_helper_killed_mid_send_loses_and_repeats_nothing(tmp_path: Path, slow_smtp: SmtpServer) -> None:
    process = _send(_big_config(tmp_path, slow_smtp))
    helper = _helper_of(process.pid)
    # Killed once 20 are out: with 200 claimed and 200 rendered ahead at most, hundreds remain.
    _wait_for(lambda: len(slow_smtp.handler.messages) >= 20)
    os.kill(helper, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "render helper stopped (exit code -9): rendering its digests here" in output
    recipients = [rcpt for _, rcpts in slow_smtp.handler.envelopes for rcpt in rcpts]
    assert {f"reader{i}@example.org" for i in range(READERS)} <= set(recipients)  # everybody
    assert len(recipients) == len(set(recipients))  # nobody twice


def test_a_stopped_send_commits_every_planned_digest_and_the_next_one_sends_the_rest(
    tmp_path: Path, slow_smtp: SmtpServer
) -> None:
    # 600 digests: the first 500 are committed before delivery starts, the rest as it reaches
    # them; a stop comes before that, so they are committed after it.
    config = _big_config(tmp_path, slow_smtp)
    process = _send(config)
    _wait_for(lambda: len(slow_smtp.handler.messages) >= 20)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 3, output  # some left pending
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        states = Counter(state for (state,) in db.execute("select state from deliveries"))
    assert set(states) == {"sent", "pending"}, states  # nothing still claimed
    again = _send(config)
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    recipients = Counter(rcpt for _, rcpts in slow_smtp.handler.envelopes for rcpt in rcpts)
    assert {f"reader{i}@example.org" for i in range(READERS)} <= set(recipients)
    assert set(recipients.values()) == {1}  # nobody twice
    assert sum(states.values()) == len(recipients)  # every digest was in the outbox after the stop


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_helper_ends_with_the_send(tmp_path: Path, slow_smtp: SmtpServer, how: signal.Signals) -> None:
    process = _send(_big_config(tmp_path, slow_smtp))
    helper = _helper_of(process.pid)
    _wait_for(lambda: len(slow_smtp.handler.messages) >= 20)
    process.send_signal(how)  # SIGTERM: a stop, finished in order; SIGKILL: the helper sees its stdin end
    process.communicate(timeout=60)
    assert process.returncode == (3 if how == signal.SIGTERM else -9)  # 3: some left pending
    _wait_for(lambda: not _alive(helper), timeout=10)
