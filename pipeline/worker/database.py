"""Which databases a worker runs on: PostgreSQL only (read without importing the task engine)."""

from __future__ import annotations

from ..config import Settings
from ..errors import WorkerError
from ..store.sqlite import _safe_url


def conninfo(database_url: str) -> str:
    """The libpq address of an SQLAlchemy PostgreSQL URL; WorkerError for any other database."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.partition("+")[0] not in ("postgresql", "postgres"):
        where = database_url.removeprefix("sqlite:///") if scheme == "sqlite" else _safe_url(database_url)
        raise WorkerError(
            f"digest worker needs PostgreSQL ([digest] database = \"postgresql+psycopg://...\"), "
            f"not {where}: on one machine with SQLite, use digest run"
        )
    return f"postgresql://{rest}"


def require_postgresql(settings: Settings) -> None:
    """WorkerError unless ``[digest] database`` is a PostgreSQL URL."""
    conninfo(settings.digest.database_url)
