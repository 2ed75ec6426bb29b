"""A uvicorn server that stops on SIGINT/SIGTERM and then returns, instead of re-raising the signal.

uvicorn shuts down gracefully on a signal and then raises the signal again with the handlers it
found. Under ``asyncio.run`` a re-raised SIGINT cancels the main task while the gateway is still
closing its services (an asyncio ERROR for every Ctrl-C, and a drain cut short); a re-raised
SIGTERM with Python's default handler ends the process before they are closed at all. This server
records the signal instead, so the caller closes everything and decides the exit code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    """``uvicorn.Server`` whose ``serve()`` returns after a signal; ``stopped_by`` says which."""

    stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Record the first signal as it arrives (the stream of a demo reads it while the server
        is still shutting down), then stop as uvicorn does."""
        if self.stopped_by is None:
            self.stopped_by = sig
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers while serving; the signals caught are kept, not raised again."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()
