"""The outbox design on PostgreSQL: claims with FOR UPDATE SKIP LOCKED, savepoints, no doubles.

Runs against a throwaway PostgreSQL cluster started here (Debian package `postgresql`, which
.ci/run installs); skipped when its binaries are absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result
from conftest import SmtpServer, body_text, free_port, many, smtp_section, text_titles
from samples import RL, SPIKING

BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if not BIN or importlib_missing("psycopg"):
        pytest.skip("PostgreSQL server binaries or psycopg not installed")
    bindir = BIN[-1].parent
    # Not under pytest's tmp folder: the postgres account cannot enter root's private folders.
    base = Path(tempfile.mkdtemp(prefix="digest-pg-"))
    # PostgreSQL refuses to run as root: use the postgres account when we are root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(base, "postgres")
    port = free_port()
    data = base / "data"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "digest"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-k {base} -h 127.0.0.1 -p {port} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://digest@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


@pytest.fixture
def database(postgres: str) -> str:
    """A fresh, empty database for one test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{postgres}/{name}"


def with_database(config: Path, url: str) -> Path:
    lines = [line for line in config.read_text().splitlines() if not line.startswith("database =")]
    text = "\n".join(lines).replace("[digest]\n", f'[digest]\ndatabase = "{url}"\n', 1)
    config.write_text(text + "\n")
    return config


def test_send_on_postgresql_delivers_once(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, database: str
) -> None:
    config = with_database(write_config(smtp=smtp_section(smtp_server)), database)
    first = cli("--config", config, "send")
    assert first.exit_code == 0, first.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert set(text_titles(body_text(ada))) == SPIKING | RL
    again = cli("--config", config, "send")
    assert again.exit_code == 0 and "3 with nothing new" in again.output
    assert len(smtp_server.handler.messages) == 3


def test_concurrent_sends_on_postgresql_deliver_each_digest_once(
    tmp_path: Path, smtp_server: SmtpServer, database: str
) -> None:
    config = with_database(many(tmp_path, 100, smtp_section(smtp_server)), database)
    command = [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    counts = Counter(rcpt for _, (rcpt,) in smtp_server.handler.envelopes)
    assert len(counts) == 100 and set(counts.values()) == {1}
