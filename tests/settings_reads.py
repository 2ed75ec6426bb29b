"""Settings that note each field a process reads: what a command actually uses of its settings.

A settings model may parse a variable that the command built on it never looks at (the Talk
gateway parses ``EARSHOT_PORT`` but listens on its own Talk port); only a run of the command on
recording settings tells the two apart.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic_settings import BaseSettings

M = TypeVar("M", bound=BaseSettings)


def recording(model: type[M], read: set[str]) -> type[M]:
    """A subclass of ``model`` whose instances add the name of each field read to ``read``."""
    fields = frozenset(model.model_fields)

    class Recording(model):  # type: ignore[valid-type,misc]
        def __getattribute__(self, name: str) -> Any:
            if name in fields:
                read.add(name)
            return super().__getattribute__(name)

    Recording.__name__ = f"Recording{model.__name__}"
    return Recording
