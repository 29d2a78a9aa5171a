"""Shared pydantic base and field types for the runbook schema."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from runbook import units

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """Every runbook section: unknown keys rejected, values immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


def _duration(value: Any) -> float:
    return units.parse_duration(value)


def _ratio(value: Any) -> float:
    return units.parse_ratio(value)


def _size(value: Any) -> int:
    return units.parse_size(value)


def _env_name(value: str) -> str:
    if not ENV_NAME.match(value):
        raise ValueError(
            f"{value!r} is not an environment variable name; a secret is never written "
            "inline: put it in an env var and name the variable here"
        )
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds, written as a Prometheus duration (30s, 5m, 1h30m)."""
Ratio = Annotated[float, BeforeValidator(_ratio)]
"""0..1, written 70% or 0.7."""
Size = Annotated[int, BeforeValidator(_size)]
"""Bytes, written 512MiB (binary) or 3.4GB (decimal)."""
EnvName = Annotated[str, AfterValidator(_env_name)]
"""The name of an environment variable that holds a secret."""
