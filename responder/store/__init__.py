"""The responder's durable state: SQLite embedded (default) or PostgreSQL shared."""

from __future__ import annotations

from pathlib import Path

from responder.store.base import IntakeResult, Store, StoreError, WorkItem

__all__ = ["IntakeResult", "Store", "StoreError", "WorkItem", "open_store"]


def open_store(url: str | None, data_dir: str | Path = "data", read_only: bool = False) -> Store:
    """A store (not yet opened) for a URL: postgresql://..., sqlite:///path, or None (SQLite).

    read_only: only reads are run (a SQLite store then takes no lock and writes no row).
    """
    if url is None or url == "":
        from responder.store.sqlite import SqliteStore

        return SqliteStore(Path(data_dir) / "responder.sqlite3", read_only)
    if url.startswith(("postgresql://", "postgres://")):
        from responder.store.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        from responder.store.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///"):], read_only)
    # Only the scheme: the rest of a mistyped URL may hold a password.
    scheme = url.partition(":")[0][:20] if "://" in url else "this"
    raise ValueError(f"{scheme!r} is not a store URL scheme (use postgresql://... or "
                     "sqlite:///PATH)")
