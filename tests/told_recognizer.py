"""A pipelined recogniser double that answers when a test says, and tells its listener then.

It stands in for Triton's timing only (:class:`~earshot.engines.recognizers.PipelinedStream`):
a chunk's answer comes after the call that sent it returned, and the stream's listener is told, so
a test shows that a caller collects it then rather than with its next chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from earshot.engines.recognizers import Samples
from earshot.events import Recognition


@dataclass
class ToldStream:
    """Answers chunk ``n`` with the final ``chunk n`` when :meth:`answer` is called and then
    tells its listener, as Triton's stream does when no call runs; a call returns the answers
    complete before it. With ``during_call`` the listener is told from inside the chunk's own
    call, which returns nothing: it stands for an answer told while the caller is busy elsewhere
    (sending results), which Triton's stream cannot make happen on demand."""

    during_call: bool = False
    sent_chunks: int = 0
    answered: int = 0
    answered_chunks: int = 0
    collections: int = 0
    listener: Callable[[], None] | None = None
    #: set when a chunk arrives
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def unanswered(self) -> bool:
        return self.answered_chunks < self.sent_chunks

    @property
    def ready(self) -> bool:
        return self.answered_chunks < self.answered

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        self.listener = listener

    def answer(self) -> None:
        self.answered = self.sent_chunks
        if self.listener is not None:
            self.listener()

    async def accept(self, samples: Samples) -> list[Recognition]:
        said = self._returned()  # the answers complete before this call
        self.sent_chunks += 1
        self.arrived.set()
        if self.during_call:
            self.answer()
        return said

    async def collect(self) -> list[Recognition]:
        self.collections += 1
        return self._returned()

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        self.answered = self.sent_chunks
        return self._returned()

    def _returned(self) -> list[Recognition]:
        said = [
            Recognition(f"chunk {n}", is_final=True)
            for n in range(self.answered_chunks + 1, self.answered + 1)
        ]
        self.answered_chunks = self.answered
        return said


@dataclass
class ToldRecognizer:
    during_call: bool = False
    sample_rate: int = 8000
    name: str = "told"
    streams: list[ToldStream] = field(default_factory=list)
    #: set when a stream opens
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def open_stream(self) -> ToldStream:
        self.streams.append(ToldStream(self.during_call))
        self.opened.set()
        return self.streams[-1]

    async def aclose(self) -> None:
        return None
