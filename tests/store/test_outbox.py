"""The outbox table: claims walk an index and stop at their limit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import queue_outbox
from sqlalchemy import event

from pipeline.store import Store, owner_id


def test_a_claim_walks_an_index_and_stops_at_its_limit(tmp_path: Path) -> None:
    # Collecting and sorting every due row at each claim made each claim cost more the more
    # digests were due: quadratic over a large send.
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, 100)
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
