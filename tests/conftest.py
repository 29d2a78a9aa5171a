"""Suite-wide options: `--long` runs the long versions of fault and load tests."""

from __future__ import annotations

import pytest


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
