"""A segment store whose writes hang, as on a half-open connection to MariaDB: a drainer that
writes to it makes no step until the writes are let go.

The real SQL store (SQLite here) with only its batch write held back, so the gateway under test
opens, numbers and reads sessions as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from earshot.events import Segment, SessionId
from earshot.storage.sql_segments import SqlSegmentStore


class HangingSegmentWrites:
    """Holds every ``SqlSegmentStore.add_segments`` until :meth:`let_go` (then they are done)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()
        self._gate = asyncio.Event()
        write = SqlSegmentStore.add_segments

        async def hanging(
            store: SqlSegmentStore,
            batch: Sequence[Segment],
            *,
            users: Mapping[SessionId, str | None],
            languages: Mapping[SessionId, str] | None = None,
        ) -> None:
            self.entered.set()
            await self._gate.wait()
            await write(store, batch, users=users, languages=languages)

        monkeypatch.setattr(SqlSegmentStore, "add_segments", hanging)

    def let_go(self) -> None:
        """Let the held writes (and every later one) through."""
        self._gate.set()
