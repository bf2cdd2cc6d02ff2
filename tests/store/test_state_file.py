"""A state file that exists but holds no digest state is refused, not taken for a first run
(which would send every entry within lookback again, to everyone); a corrupted one is named.
Real files, through the real CLI."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import Result
from conftest import many

from pipeline.errors import StoreError
from pipeline.store import Store


def _state(tmp_path: Path) -> Path:
    return tmp_path / "state" / "digest.db"


def test_a_missing_file_is_a_first_run_and_the_new_file_is_whole(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    config = many(tmp_path, 1, "")
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in _state(tmp_path).parent.iterdir()) == ["digest.db"]  # no drafts left
    with closing(sqlite3.connect(_state(tmp_path))) as db:
        assert db.execute("select value from meta where key = 'schema'").fetchone() is not None


@pytest.mark.parametrize("verb", [("send",), ("status",), ("fetch",)])
def test_an_emptied_state_file_is_refused_with_what_to_do(
    cli: Callable[..., Result], tmp_path: Path, verb: tuple[str, ...]
) -> None:
    config = many(tmp_path, 1, "")
    assert cli("--config", config, "send").exit_code == 0
    _state(tmp_path).write_bytes(b"")  # a full disk, or `> state/digest.db`
    for leftover in ("digest.db-wal", "digest.db-shm"):
        (_state(tmp_path).parent / leftover).unlink(missing_ok=True)
    result = cli("--config", config, *verb)
    assert result.exit_code == 1, result.output
    assert f"state file {_state(tmp_path)} is empty (0 bytes)" in result.output
    assert "restore it from a backup, or delete it to start afresh" in result.output
    assert "goes to everyone again" in result.output  # what starting afresh costs
    assert _state(tmp_path).stat().st_size == 0  # left as it was
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1  # nothing sent again


def test_a_foreign_database_is_refused_and_left_untouched(cli: Callable[..., Result], tmp_path: Path) -> None:
    config = many(tmp_path, 1, "")
    _state(tmp_path).parent.mkdir()
    with closing(sqlite3.connect(_state(tmp_path))) as db:
        db.execute("create table notes (id integer primary key, body text)")
        db.execute("insert into notes (body) values ('mine')")
        db.commit()
    before = _state(tmp_path).read_bytes()
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert f"state database {_state(tmp_path)} is not a digest state" in result.output
    assert "tables but no digest `meta` table" in result.output
    assert "delete it to start afresh" in result.output
    assert _state(tmp_path).read_bytes() == before  # not even switched to WAL
    assert sorted(p.name for p in _state(tmp_path).parent.iterdir()) == ["digest.db"]


def test_store_refuses_them_directly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match=r"empty \(0 bytes\)"):
        Store(f"sqlite:///{empty}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match=r"garbage\.db is corrupted \(file is not a database\)"):
        Store(f"sqlite:///{garbage}")


def _corrupt_the_middle(path: Path) -> None:
    """Overwrite the pages between the first quarter and the last quarter with garbage (the
    schema on page 1 stays readable, so the damage is found by a query, not at opening)."""
    size = path.stat().st_size
    assert size >= 8 * 4096
    with path.open("r+b") as file:
        file.seek(size // 4 // 4096 * 4096)
        file.write(b"\xa5" * (size // 2))


@pytest.mark.parametrize("verb", [("status",), ("send", "--no-fetch"), ("send",)])
def test_a_corrupted_state_file_is_named_without_the_sql(
    cli: Callable[..., Result], tmp_path: Path, verb: tuple[str, ...]
) -> None:
    config = many(tmp_path, 40, "")
    assert cli("--config", config, "send").exit_code == 0
    _corrupt_the_middle(_state(tmp_path))
    result = cli("--config", config, *verb)
    assert result.exit_code == 1, result.output
    assert (
        f"state database {_state(tmp_path)} is corrupted (database disk image is malformed)" in result.output
    )
    assert "restore it from a backup" in result.output
    for sql in ("[SQL", "SELECT", "INSERT", "UPDATE", "[parameters"):
        assert sql not in result.output, result.output
