"""The record modes (vcrpy's names) and the environment variables that set replay options.

Kept apart from the replay machinery so that the command line can list the modes without
importing httpx or respx.
"""

from __future__ import annotations

import os
from enum import Enum, StrEnum

from toolkit.errors import UsageError

RECORD_MODE_VARIABLE = "CHAINKIT_RECORD_MODE"
RECORD_VIA_VARIABLE = "CHAINKIT_RECORD_VIA"
ALLOW_HOSTS_VARIABLE = "CHAINKIT_ALLOW_HOSTS"
RECORD_ERRORS_VARIABLE = "CHAINKIT_RECORD_ERRORS"


class RecordMode(StrEnum):
    """The vcrpy record modes (see the table in the README)."""

    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"

    @classmethod
    def parse(cls, value: str | RecordMode | None) -> RecordMode:
        """``value``, else $CHAINKIT_RECORD_MODE, else ``none``; an error lists the choices."""
        if value is None or value == "":
            value = os.environ.get(RECORD_MODE_VARIABLE) or cls.NONE.value
        try:
            return cls(str(value.value if isinstance(value, Enum) else value).lower())
        except ValueError:
            choices = ", ".join(cls.choices())
            raise UsageError(f"unknown record mode {value!r}: use one of {choices}") from None

    @classmethod
    def choices(cls) -> list[str]:
        return [mode.value for mode in cls]


def allowed_hosts_from_environment() -> list[str]:
    """The hosts $CHAINKIT_ALLOW_HOSTS (comma-separated) lets through live, unrecorded."""
    return [host.strip() for host in os.environ.get(ALLOW_HOSTS_VARIABLE, "").split(",") if host.strip()]


__all__ = [
    "ALLOW_HOSTS_VARIABLE",
    "RECORD_ERRORS_VARIABLE",
    "RECORD_MODE_VARIABLE",
    "RECORD_VIA_VARIABLE",
    "RecordMode",
    "allowed_hosts_from_environment",
]
