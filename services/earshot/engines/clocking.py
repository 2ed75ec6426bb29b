"""A decoding clock: one thread steps every live stream of a :class:`SteppedDecoder` together.

May do: start, stop and join its one thread; call the decoder on it; call the replies it is given
(from that thread). Must not: use asyncio, know which engine it drives, read settings.

Why: a model whose every step costs the same whatever the number of streams in it (Kyutai steps a
fixed slot batch) should advance every live stream in each step. Stepping whichever streams happen
to have audio when a request arrives gives, with N streams of random phase, up to N steps per frame
of audio, each advancing one stream. The clock instead ticks once per frame period
(``decoder.step_seconds``) and, at each tick, advances every stream that has a frame waiting by
one frame, in one step.

Work flows like this: :meth:`DecodingClock.submit` hands audio (or the end of a stream) and a reply
to the clock's thread, which feeds it to the decoder at once. A chunk that leaves no full frame
waiting is answered at once (with its partial if its text changed); one that completes frames is
answered after the tick whose steps decode the last of them, so a chunk's answer holds exactly what
its audio made the model say, as the unclocked ``decode`` would (unless the stream is late, see
below). A chunk that completes one frame waits for at most one tick. A client may send a stream's
next chunk before the previous one is answered (Triton's client pipelines its requests): each chunk
is answered once its own frames are stepped, whatever arrived after it, its partial with it only
when the steps stopped at its last frame (not part-way into the next chunk's).

Steps happen only at ticks. A tick runs one step of every stream with a frame waiting; a step
costs the same whatever the streams in it (a fixed slot batch), so any step besides that one
advances only the streams that need it and lowers the share of live streams each step advances.
Such catch-up steps exist for streams that fell behind: after the tick's step, while a stream
holds more frames than its largest chunk brought (its own burst: 1 for 20 ms chunks, 3 for 200 ms
ones), the tick runs catch-up steps, each advancing every stream holding a frame, as long as one
more step ends before the next tick is due (a step is assumed to cost what the tick's step did).
So bursts of a client's usual size are spread over the ticks and never cost a step of their own,
streams that fell behind together (a stall) catch up together, and catching up never delays a
tick; a model step longer than the period makes ticks run back to back and leaves no time to
catch up (the streams then fall behind real time: the machine is too slow for them).

A client that fell behind real time (a stall of the process, a slow step) holds its backlog on
its own side and sends it one chunk per answer, so the frames it makes the clock hold never show
it, and waiting for a tick per frame it would never catch up. Each stream therefore also keeps an
audio clock: the time its audio started (re-based whenever the client took longer than a period
to send after an answer, as a real-time client does) plus the audio it sent. A stall of the
whole process (client included) looks like a pause and is forgiven; a stall of the clock, or of a
Triton model while its clients go on, is caught up. A stream further behind that clock than
waiting for its ticks explains (one period more than its burst) has its chunks answered at once,
frame or not: its client then sends its backlog without waiting, the frames pile up in the clock,
and the ticks' catch-up steps advance them. The finals those steps make the model say come with
the stream's next answer (or its last, when it ends); partials only with an answer that leaves no
frame waiting, so what a late stream is told is what the unclocked ``decode`` says, less some
partials.

Ticks keep to a grid of ``step_seconds``; a late tick runs at once and the grid moves on from it,
so a slow step delays the streams but never makes a burst of steps.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic

from earshot.engines.recognizers import EngineError, Samples, SteppedDecoder, StreamT
from earshot.events import Recognition

Reply = Callable[[list[Recognition], EngineError | None], None]


@dataclass(frozen=True, slots=True)
class StepStats:
    """What the clock has done since it started.

    Attributes:
        ticks: ticks of the clock that stepped (each runs one step, then any catch-up steps).
        steps: model steps run.
        advanced: stream-steps: the streams each step advanced, summed over the steps.
        live: the live streams (audio sent, not finished and flushed, not failed) at each step,
            summed: ``advanced / live`` is the share of live streams a step advances.
        audio_seconds: seconds of audio the steps consumed per stream (``steps * step_seconds``).
        step_seconds: time spent in model steps (``step_seconds / steps``: the mean step; over the
            time passed: the share of the clock's thread the model takes).
    """

    ticks: int = 0
    steps: int = 0
    advanced: int = 0
    live: int = 0
    audio_seconds: float = 0.0
    step_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A chunk waiting for its answer, and the stream's frames stepped once its frames are.

    ``frames`` is None for the end of a stream (answered once it is flushed) and for a chunk that
    failed or came to a failed stream (answered with the error).
    """

    reply: Reply
    frames: int | None


@dataclass(eq=False)  # no slots: with Generic, CPython 3.12.3 left out the weakref slot
class ClockedStream(Generic[StreamT]):
    """A stream of the clock: its decoder state, what it said since its last answer, who waits."""

    state: StreamT
    said: list[Recognition] = field(default_factory=list)
    replies: list[_Waiting] = field(default_factory=list)
    # Frames the steps advanced it by.
    stepped: int = 0
    ended: bool = False
    # The most frames one chunk of the stream brought: more waiting than that is lag.
    burst: int = 1
    # The stream's audio clock: when its audio started (re-based after pauses), the audio sent,
    # and when it was last answered.
    anchor: float | None = None
    sent_seconds: float = 0.0
    answered_at: float = 0.0
    # A step failed while none of its chunks waited: the next one is answered with this.
    error: EngineError | None = None


@dataclass(frozen=True, slots=True)
class _Submission(Generic[StreamT]):
    stream: ClockedStream[StreamT]
    samples: Samples | None
    ends: bool
    reply: Reply
    at: float


# (streams advanced, live streams, seconds the step took)
StepObserver = Callable[[int, int, float], None]


class DecodingClock(Generic[StreamT]):
    """Steps a :class:`SteppedDecoder` on one thread, once per frame period; see the module doc."""

    def __init__(
        self,
        decoder: SteppedDecoder[StreamT],
        *,
        observe: StepObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the clock's thread.

        Args:
            decoder: the engine's synchronous core; only the clock's thread calls it after this.
            observe: called on the clock's thread after each step with the streams it advanced, the
                live streams and the seconds it took (for metrics).
            clock: seconds, monotonic.
        """
        self._decoder = decoder
        self._observe = observe
        self._clock = clock
        self._period = decoder.step_seconds
        self._frame_samples = round(decoder.step_seconds * decoder.sample_rate)
        self._condition = threading.Condition()
        self._inbox: list[_Submission[StreamT]] = []
        self._closing = False
        # Streams a step has work for, by id; and every live stream (weak: one dropped unfinished
        # stops counting once collected).
        self._live: dict[int, ClockedStream[StreamT]] = {}
        self._open: weakref.WeakSet[ClockedStream[StreamT]] = weakref.WeakSet()
        self._stats = StepStats()
        self._thread = threading.Thread(
            target=self._run, name=f"earshot-{decoder.name}-clock", daemon=True
        )
        self._thread.start()

    @property
    def decoder(self) -> SteppedDecoder[StreamT]:
        """The decoder the clock steps."""
        return self._decoder

    @property
    def stats(self) -> StepStats:
        """Steps, streams advanced and live streams so far."""
        return self._stats

    def open(self) -> ClockedStream[StreamT]:
        """Create a stream (``decoder.open``: it may raise ``EngineOverloaded``)."""
        return ClockedStream(self._decoder.open())

    def submit(
        self, stream: ClockedStream[StreamT], samples: Samples | None, *, ends: bool, reply: Reply
    ) -> None:
        """Hand audio, the end of the stream, or both to the clock; ``reply`` gets the answer.

        ``reply`` is called once, on the clock's thread: with the recognitions of the audio once
        the stream has no full frame waiting (after its flush when ``ends``), or with an error.
        """
        with self._condition:
            if self._closing:
                closed = True
            else:
                closed = False
                self._inbox.append(_Submission(stream, samples, ends, reply, self._clock()))
                self._condition.notify()
        if closed:
            reply([], EngineError(f"the {self._decoder.name} decoding clock is stopped"))

    def close(self) -> None:
        """Stop and join the thread; streams still waiting are answered with an error."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join()
        error = EngineError(f"the {self._decoder.name} decoding clock was stopped")
        for submission in self._inbox:
            submission.reply([], error)
        for stream in self._live.values():
            self._answer(stream, error)
        self._inbox.clear()
        self._live.clear()

    def _run(self) -> None:
        next_tick = self._clock() + self._period
        while (inbox := self._wait(next_tick)) is not None:
            for submission in inbox:
                self._take(submission)
            now = self._clock()
            if now >= next_tick and self._live:
                # A tick more than a period late moves the grid: the next one is a period later,
                # never a burst of ticks (streams that fell behind catch up in this tick's spare
                # time, in steps of their own).
                next_tick += self._period
                if next_tick <= now:
                    next_tick = now + self._period
                self._tick(catch_up_until=next_tick)
            elif not self._live:
                next_tick = max(next_tick, now)

    def _wait(self, next_tick: float) -> list[_Submission[StreamT]] | None:
        with self._condition:
            while not self._inbox and not self._closing:
                if self._live:
                    timeout = next_tick - self._clock()
                    if timeout <= 0:
                        break
                    self._condition.wait(timeout)
                else:
                    self._condition.wait()
            if self._closing:
                return None
            inbox, self._inbox = self._inbox, []
            return inbox

    def _take(self, submission: _Submission[StreamT]) -> None:
        stream = submission.stream
        if stream.error is not None:  # it failed in a step while no chunk of it waited
            stream.replies.append(_Waiting(submission.reply, None))
            self._answer(stream, stream.error)
            return
        self._open.add(stream)
        stream.ended = stream.ended or submission.ends
        # When the client sent it (not when this thread got to it): a stalled clock is no pause.
        sent_at = submission.at
        if stream.anchor is None or (
            not stream.replies and sent_at - stream.answered_at > self._period
        ):
            stream.anchor = sent_at - stream.sent_seconds  # on time: its client waited to send
        if submission.samples is not None:
            chunk_frames = -(-submission.samples.size // self._frame_samples)
            stream.burst = max(stream.burst, chunk_frames)
            stream.sent_seconds += submission.samples.size / self._decoder.sample_rate
        try:
            if submission.samples is not None and submission.samples.size:
                self._decoder.accept(stream.state, submission.samples)
            if submission.ends:
                self._decoder.finish(stream.state)
        except Exception as error:
            stream.replies.append(_Waiting(submission.reply, None))
            self._live.pop(id(stream), None)
            self._answer(stream, _as_engine_error(error))
            return
        frames = None if stream.ended else stream.stepped + self._decoder.frames(stream.state)
        stream.replies.append(_Waiting(submission.reply, frames))
        if not self._decoder.behind(stream.state):
            self._answer(stream, None)
            return
        self._live[id(stream)] = stream
        if self._late(stream, self._clock()):
            # Its client holds a backlog and sends one chunk per answer: answered now, it sends
            # the backlog at once, whose frames the next ticks catch up (with every other stream
            # holding frames). What the steps of this frame say comes with a later answer.
            self._answer(stream, None, early=True)

    def _tick(self, *, catch_up_until: float) -> None:
        """One step of every stream behind; catch-up steps while a stream lags and time is left."""
        old = self._stats
        self._stats = replace(old, ticks=old.ticks + 1)
        started = self._clock()
        streams = [s for s in self._live.values() if self._decoder.behind(s.state)]
        if streams and self._step(streams):
            # Every step costs about the same (a fixed batch): a catch-up step is taken only when
            # it ends before the next tick is due, so catching up never delays a tick.
            cost = self._clock() - started
            while any(self._lagging(s) for s in self._live.values()):
                if self._clock() + cost > catch_up_until:
                    break
                # A catch-up step advances every stream holding a frame: streams that all lag
                # (after a stall) catch up together.
                if not self._step(self._holding_frames()):
                    break
        now = self._clock()
        for stream in list(self._live.values()):
            if not self._decoder.behind(stream.state):
                del self._live[id(stream)]
                self._answer(stream, None)
            elif stream.replies and self._late(stream, now):
                self._answer(stream, None, early=True)
            else:
                self._answer_stepped(stream)

    def _holding_frames(self) -> list[ClockedStream[StreamT]]:
        return [s for s in self._live.values() if self._decoder.frames(s.state)]

    def _lagging(self, stream: ClockedStream[StreamT]) -> bool:
        return not stream.ended and self._decoder.frames(stream.state) > stream.burst

    def _late(self, stream: ClockedStream[StreamT], now: float) -> bool:
        """Behind its audio clock by more than waiting for its ticks explains, with a frame."""
        if stream.ended or stream.anchor is None or not self._decoder.frames(stream.state):
            return False
        # A chunk of `burst` frames waits up to that many ticks, and one more for its phase.
        return now - stream.anchor - stream.sent_seconds > self._period * (stream.burst + 1)

    def _step(self, streams: list[ClockedStream[StreamT]]) -> bool:
        """One model step of ``streams``; False when it failed (they are answered with the error)."""
        started = self._clock()
        try:
            results = self._decoder.step([stream.state for stream in streams])
        except Exception as error:
            for stream in streams:
                del self._live[id(stream)]
                self._answer(stream, _as_engine_error(error))
            return False
        self._count(
            advanced=len(streams),
            live=max(len(self._open), len(streams)),
            seconds=self._clock() - started,
        )
        for stream, said in zip(streams, results, strict=True):
            stream.stepped += 1
            stream.said.extend(said)
        return True

    def _count(self, *, advanced: int, live: int, seconds: float) -> None:
        old = self._stats
        self._stats = StepStats(
            ticks=old.ticks,
            steps=old.steps + 1,
            advanced=old.advanced + advanced,
            live=old.live + live,
            audio_seconds=old.audio_seconds + self._period,
            step_seconds=old.step_seconds + seconds,
        )
        if self._observe is not None:
            self._observe(advanced, live, seconds)

    def _answer(
        self, stream: ClockedStream[StreamT], error: EngineError | None, *, early: bool = False
    ) -> None:
        """Answer the stream's waiting chunks with what it said (finals), and its partial unless
        ``early``: a stream answered with frames still waiting is mid-way through a chunk, whose
        partial would be one its unclocked decoding never says."""
        if error is not None or stream.ended:
            self._open.discard(stream)
        if not stream.replies:
            # Nobody waits (its chunks were answered early): what it said waits for the next one.
            if error is not None:
                stream.error = error
            return
        replies, stream.replies = stream.replies, []
        self._reply(stream, replies, error, partial=error is None and not early)

    def _answer_stepped(self, stream: ClockedStream[StreamT]) -> None:
        """Answer the chunks whose frames are all stepped while later ones still wait (pipelined).

        With the partial only when the steps stopped at the last such chunk's frames: further on,
        it would be one its unclocked decoding never says.
        """
        count = 0
        for waiting in stream.replies:
            if waiting.frames is None or waiting.frames > stream.stepped:
                break
            count += 1
        if count:
            exact = stream.replies[count - 1].frames == stream.stepped
            replies, stream.replies = stream.replies[:count], stream.replies[count:]
            self._reply(stream, replies, None, partial=exact)

    def _reply(
        self,
        stream: ClockedStream[StreamT],
        replies: list[_Waiting],
        error: EngineError | None,
        *,
        partial: bool,
    ) -> None:
        stream.answered_at = self._clock()
        said, stream.said = stream.said, []
        if partial:
            said.extend(self._decoder.report(stream.state))
        # Several chunks answered together: the last one carries what they made the model say.
        for position, waiting in enumerate(replies, start=1):
            waiting.reply(said if position == len(replies) else [], error)


def _as_engine_error(error: Exception) -> EngineError:
    if isinstance(error, EngineError):
        return error
    wrapped = EngineError(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
