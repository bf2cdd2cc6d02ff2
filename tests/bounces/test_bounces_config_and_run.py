"""The [bounces] section as `digest check` sees it, and `digest run` reading the bounce mailbox
on its own every [bounces] every (the real scheduler, in a process of its own)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import BASE_CONFIG, bounce_from_fixture, wait_for


def with_bounces(write_config: Callable[..., Path], section: str) -> Path:
    return write_config(BASE_CONFIG, smtp=section)


def test_check_names_each_mistake_in_bounces_with_its_line(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = with_bounces(write_config, '[bounces]\naddress = "bounce+x@example.net"\nsoft_limit = 0\n')
    result = cli("--config", config, "check")
    assert result.exit_code == 2
    assert "bounces.address: 'bounce+x@example.net' holds a +: digest adds +TOKEN itself" in result.output
    assert "bounces.soft_limit: must be at least 1, not 0" in result.output

    both = with_bounces(
        write_config,
        '[bounces]\naddress = "bounce@example.net"\nimap_host = "imap.example.net"\nmaildir = "box"\n',
    )
    result = cli("--config", both, "check")
    assert result.exit_code == 2 and "set imap_host or maildir, not both" in result.output

    section = (
        '[bounces]\naddress = "bounce@example.net"\nimap_host = "imap.example.net"\n'
        'imap_username = "bounces"\nimap_password_env = "DIGEST_TEST_NO_SUCH_VARIABLE"\n'
    )
    config = with_bounces(write_config, section)
    result = cli("--config", config, "check")
    assert result.exit_code == 2
    line = config.read_text().splitlines().index('imap_password_env = "DIGEST_TEST_NO_SUCH_VARIABLE"') + 1
    assert f"{config}:{line}: bounces.imap_password_env: environment variable" in result.output
    assert cli("--config", config, "check", env={"DIGEST_TEST_NO_SUCH_VARIABLE": "pw"}).exit_code == 0

    config = with_bounces(write_config, '[bounces]\naddress = "bounce@example.net"\nmaildir = "nowhere"\n')
    result = cli("--config", config, "check")
    assert (
        result.exit_code == 2 and "bounces.maildir:" in result.output and "is not a Maildir" in result.output
    )
    result = cli("--config", config, "bounces")
    assert result.exit_code == 1 and "is not a Maildir (it has no new/ or cur/)" in result.output

    plain = write_config()
    result = cli("--config", plain, "bounces")
    assert result.exit_code == 2 and "has no [bounces] section" in result.output


def test_digest_run_reads_the_bounce_mailbox_every_interval(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    box = tmp_path / "bounce-box"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    section = "[bounces]\n" + "".join(
        f"{key} = {json.dumps(value)}\n"
        for key, value in {"address": "bounce@example.net", "maildir": str(box), "every": "1s"}.items()
    )
    config = with_bounces(write_config, section)
    assert cli("--config", config, "send").exit_code == 0  # into the outbox Maildir
    ada = next(
        f for f in (tmp_path / "outbox" / "new").iterdir() if b"To: Ada <ada@example.org>" in f.read_bytes()
    )
    data = ada.read_bytes()
    verp = re.match(rb"Return-Path: <([^>]+)>", data)
    message_id = re.search(rb"\r\nMessage-ID: (<[^>]+>)", data)
    assert verp and message_id
    bounce = bounce_from_fixture(
        "gmail-hard", verp=verp[1].decode(), recipient="ada@example.org", message_id=message_id[1].decode()
    )
    (box / "new" / "gmail").write_bytes(bounce)
    (box / "new" / "not-a-bounce").write_bytes(
        bounce_from_fixture("autoreply", verp="x", recipient="y", message_id="z")
    )

    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (box / ".Processed" / "cur" / "gmail:2,").exists(), timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "bounce mailbox=" in log and "recorded=" in log
    assert "left='an automatic reply (out of office), not a bounce'" in log
    assert (box / "new" / "not-a-bounce").exists()
    status = cli("--config", config, "status")
    assert "ada@example.org: suppressed (hard bounce: 5.1.1" in status.output
