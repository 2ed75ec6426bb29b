"""The sequences of a Triton streaming model whose decoder runs on a decoding clock.

May do: keep one clocked stream per sequence, start and stop a :class:`DecodingClock` (its thread)
and a thread that answers requests. Must not: import ``triton_python_backend_utils``
(``model-repo/kyutai_stt/1/model.py`` hands each request and its response sender to
:meth:`ClockedSequences.submit` and returns), use asyncio, read the environment.

Triton's sequence batcher hands ``execute`` whichever sequences have a request queued; a decoupled
model may answer later, from another thread. So ``execute`` only submits each request to the clock
and returns at once: the clock steps every live sequence together once per frame period, whatever
the batches Triton formed, and answers each request once its audio is decoded (see
:mod:`earshot.engines.clocking`). Answers (and step observations) go through a queue to a thread of
their own: sending a response is a round trip to the Triton server, and the clock must not wait
for tens of them before its next tick. Requests, their errors and the segment numbers follow the same
contract as :class:`earshot.engines.sequencing.SequenceTable`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic

from earshot.engines.clocking import ClockedStream, DecodingClock, StepObserver
from earshot.engines.recognizers import EngineError, EngineOverloaded, SteppedDecoder, StreamT
from earshot.engines.sequencing import OVERLOADED_MARK, Chunk, OpenSequence, Outcome, numbered
from earshot.events import Recognition

Answer = Callable[[Outcome], None]

_log = logging.getLogger(__name__)


class ClockedSequences(Generic[StreamT]):
    """The open sequences of one model instance, stepped on one decoding clock."""

    def __init__(
        self,
        decoder: SteppedDecoder[StreamT],
        *,
        idle_seconds: float,
        observe: StepObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the decoding clock.

        Args:
            decoder: the engine's synchronous core.
            idle_seconds: the model's ``max_sequence_idle_microseconds`` in seconds: Triton forgets
                a sequence idle this long without telling the model, so it is ended here too.
            observe: called after each step with the streams advanced, the live streams and the
                seconds the step took.
            clock: seconds, monotonic (tests pass their own).
        """
        self._outbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(
            target=self._send, name=f"earshot-{decoder.name}-answers", daemon=True
        )
        self._sender.start()

        def observed(advanced: int, live: int, seconds: float) -> None:
            if observe is not None:
                self._outbox.put(lambda: observe(advanced, live, seconds))

        self._clock = DecodingClock(decoder, observe=observed)
        self._idle_seconds = idle_seconds
        self._now = clock
        self._lock = threading.Lock()
        self._sequences: dict[int, OpenSequence[ClockedStream[StreamT]]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._sequences)

    @property
    def decoding_clock(self) -> DecodingClock[StreamT]:
        """The clock (its step statistics)."""
        return self._clock

    def submit(self, chunk: Chunk, answer: Answer) -> None:
        """Feed a chunk to its sequence; ``answer`` gets its outcome, maybe later, on another thread.

        A chunk without START for a sequence not held gets an error at once; a START beyond the
        decoder's slots gets an error starting with ``overloaded: `` at once (nothing was taken).
        """
        now = self._now()
        try:
            sequence = self._sequence_of(chunk, now)
        except EngineOverloaded as exc:
            answer(Outcome(error=f"{OVERLOADED_MARK}{exc}"))
            return
        except EngineError as exc:
            answer(Outcome(error=str(exc)))
            return

        def reply(said: list[Recognition], error: EngineError | None) -> None:
            if error is not None:
                self._drop(chunk.corrid, sequence)
                outcome = Outcome(error=str(error))
            else:
                outcome = numbered(sequence, said)
            self._outbox.put(lambda: answer(outcome))

        self._clock.submit(sequence.state, chunk.audio, ends=chunk.end, reply=reply)

    def close(self) -> None:
        """Stop the clock; requests still waiting are answered with an error."""
        self._clock.close()
        self._outbox.put(None)
        self._sender.join()

    def _send(self) -> None:
        while (job := self._outbox.get()) is not None:
            try:
                job()
            except Exception:  # one failed send (a cancelled request) must not stop the others
                _log.exception(
                    "answering a request of the %s model failed", self._clock.decoder.name
                )

    def _sequence_of(self, chunk: Chunk, now: float) -> OpenSequence[ClockedStream[StreamT]]:
        with self._lock:
            self._forget_idle(now)
            if chunk.start:
                # A START for a held id restarts it: the client gave up on the old sequence.
                self._end(self._sequences.pop(chunk.corrid, None))
                self._sequences[chunk.corrid] = OpenSequence(self._clock.open())
            sequence = self._sequences.get(chunk.corrid)
            if sequence is None:
                raise EngineError(
                    f"sequence {chunk.corrid} is unknown to this model instance: its first request "
                    "must carry START (it may have been idle longer than the model allows)"
                )
            sequence.last_seen = now
            if chunk.end:
                del self._sequences[chunk.corrid]
            return sequence

    def _drop(self, corrid: int, sequence: OpenSequence[ClockedStream[StreamT]]) -> None:
        with self._lock:
            if self._sequences.get(corrid) is sequence:
                del self._sequences[corrid]

    def _forget_idle(self, now: float) -> None:
        stale = [c for c, s in self._sequences.items() if now - s.last_seen > self._idle_seconds]
        for corrid in stale:
            self._end(self._sequences.pop(corrid))

    def _end(self, sequence: OpenSequence[ClockedStream[StreamT]] | None) -> None:
        # Flushed and closed like any ended stream, so its decoder slot comes back; nobody listens.
        if sequence is not None:
            self._clock.submit(sequence.state, None, ends=True, reply=_nobody)


def _nobody(said: list[Recognition], error: EngineError | None) -> None:
    del said, error
