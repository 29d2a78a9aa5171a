"""Suite-wide options: `--long` runs the long versions of fault and load tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from responder.store import Store, open_store


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long fault/load variants (default: their short versions)",
    )


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """Whether the long variants were asked for; tests scale their trial counts by it."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store of each kind: real SQLite in the test's dir, a fresh PostgreSQL
    database (a module may define its own `store`, e.g. one the app opens itself)."""
    s = (open_store(None, tmp_path / "data") if request.param == "sqlite"
         else open_store(request.getfixturevalue("postgres_dsn")))
    await s.open()
    yield s
    await s.close()
