"""``digest worker`` refuses SQLite (pointing to ``digest run``) and checks its ``[worker]`` keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import BASE_CONFIG

from pipeline.config import load_settings
from pipeline.worker.tick import tick_cron


def test_worker_on_sqlite_says_to_use_digest_run_and_creates_nothing(
    tmp_path: Path, write_config: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    config = write_config()
    result = cli("--config", config, "worker")
    assert result.exit_code == 1
    assert "digest worker needs PostgreSQL" in result.output
    assert "use digest run" in result.output
    assert not (tmp_path / "state").exists()  # (no state file made on the way)


def test_worker_keys_are_checked_with_their_line(
    write_config: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    config = write_config(BASE_CONFIG + '\n[worker]\nlease = "1s"\ntick = "7s"\n')
    result = cli("--config", config, "check")
    assert result.exit_code == 2
    assert "worker.lease" in result.output and "at least 3s" in result.output
    assert "worker.tick" in result.output and "dividing a minute" in result.output


def test_worker_keys_accept_what_the_readme_shows(
    write_config: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    text = '\n[worker]\nlease = "2m"\nbatch = 500\ndeliver_for = "60s"\ntick = "1m"\n'
    result = cli("--config", write_config(BASE_CONFIG + text), "check")
    assert result.exit_code == 0, result.output


def test_tick_becomes_a_cron_line_with_seconds_or_minutes(write_config: Callable[..., Path]) -> None:
    lines = {}
    for tick in ("1s", "2s", "30s", "1m", "60s", "5m", "1h"):
        settings = load_settings(write_config(BASE_CONFIG + f'\n[worker]\ntick = "{tick}"\n'))
        lines[tick] = tick_cron(settings)
    assert lines == {
        "1s": "* * * * * */1",
        "2s": "* * * * * */2",
        "30s": "* * * * * */30",
        "1m": "* * * * *",
        "60s": "* * * * *",
        "5m": "*/5 * * * *",
        "1h": "*/60 * * * *",
    }
