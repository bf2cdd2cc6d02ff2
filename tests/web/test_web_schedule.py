"""``digest run`` beside ``digest serve`` on one database: the scheduler follows a schedule a
reader changed on the web without a restart, and sends nothing to a reader who unsubscribed."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import SmtpServer, body_text, smtp_section, text_titles
from web_server import WEB_SECRET, digest, web_config, web_env

from pipeline.config import load_settings
from pipeline.store import Store
from pipeline.web.tokens import Signer

SIGNER = Signer(WEB_SECRET.encode())


def wait_log(log: Path, pattern: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while re.search(pattern, log.read_text()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"log never showed {pattern!r}:\n{log.read_text()}")
        time.sleep(0.1)


def test_run_follows_a_schedule_changed_on_the_web_and_skips_an_unsubscribed_reader(
    tmp_path: Path, smtp_server: SmtpServer, web_server: Any
) -> None:
    config = web_config(tmp_path, web_server.base_url, smtp=smtp_section(smtp_server, timeout="30s"))
    text = config.read_text()
    # Ada's config schedule fires once a year (not today); Grace's every 2 seconds.
    text = text.replace('schedule = "daily 07:00"', 'schedule = "cron 0 3 1 1 *"')
    text = text.replace('topics = ["diffusion"]', 'topics = ["diffusion"]\nschedule = "every 2s"')
    config.write_text(text)
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        store.mark_scheduled("ada@example.org", datetime.now(UTC) - timedelta(hours=2))
    served = web_server.start(config)
    grace = f"/u/{SIGNER.token('unsubscribe', 'grace@example.org')}"
    assert served.client.post(grace, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    log = tmp_path / "run.log"
    with log.open("wb") as handle:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=web_env(),
        )
        try:
            wait_log(log, "scheduler started")
            wait_log(log, r"digest to=Grace@example\.org skipped=unsubscribed")
            assert smtp_server.handler.messages == []
            # Ada picks hourly digests on her page while the scheduler runs.
            page = f"/p/{SIGNER.token('preferences', 'ada@example.org')}"
            form = served.client.get(page).text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf
            saved = served.client.post(
                page,
                data={"csrf": csrf[1], "topics": ["spiking", "rl"], "schedule": "every 1h", "action": "save"},
            )
            assert saved.status_code == 200 and "Schedule: every 1h." in saved.text
            # Within a watchdog round: her job is rescheduled, and the hour she is owed is served.
            wait_log(log, r"readers' choices followed: rescheduled digest:ada@example\.org \(every 1h UTC\)")
            deadline = time.monotonic() + 60
            while not smtp_server.handler.to("ada@example.org") and time.monotonic() < deadline:
                time.sleep(0.1)
            (message,) = smtp_server.handler.to("ada@example.org")
            assert "Offline Reinforcement Learning with Conservative Value Ensembles" in text_titles(
                body_text(message)
            )
            time.sleep(3)  # Grace's 2-second schedule keeps firing: still nothing for her
            assert smtp_server.handler.to("Grace@example.org") == []
            assert len(smtp_server.handler.to("ada@example.org")) == 1
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
    assert daemon.returncode == 0, log.read_text()
    status = digest(config, "status")
    assert re.search(r"Grace@example\.org .*unsubscribed \(web, at ", status.stdout), status.stdout
    assert re.search(r"ada@example\.org .*every 1h \(web\)", status.stdout), status.stdout
