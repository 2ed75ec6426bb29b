"""A pass run again and again at an interval, as one task its owner starts, stops and watches.

The operator's loops (the drift check, the pool check) are started and stopped by kopf's startup
and cleanup handlers; a loop that ended by itself (a bug in its pass) makes the operator's
/healthz fail, so the kubelet restarts it instead of it running on half blind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs ``step`` every ``interval_s`` seconds (the first run one interval after start)."""

    def __init__(
        self, name: str, *, interval_s: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        self._name = name
        self._interval_s = interval_s
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (nothing happens if it runs already)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end; re-raises what ended it by itself."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # our own caller is being cancelled: pass it on
                raise

    @property
    def healthy(self) -> bool:
        """False once the loop has ended by itself."""
        return self._task is None or not self._task.done()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._step()
