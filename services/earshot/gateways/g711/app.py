"""The telephony gateway's ASGI app: ``WS /ws/transcribe/{session_id}``, ``/health``, ``/metrics``.

The WebSocket handler only moves frames: decoding, recognition and storage live in
:mod:`earshot.gateways.g711.transcribing`. Every way a stream can end is a :class:`Refusal` with a
precise error message and close code; the client hears it at once, and whatever was recognised
before it is then stored.

A connection is admitted before its WebSocket handshake completes (the session id, its token, the
pool's registration of the session, the gateway's lag and connection cap): a client whose handshake
completes is streaming, from its first frame, unless the first thing it hears is a refusal, sent at
once after the handshake (the refusals keep the telephony protocol's message and close code).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketState

from earshot import metrics
from earshot.audio.codecs import InvalidAudio
from earshot.audio.framing import duration_seconds
from earshot.engines.recognizers import (
    QUIET_COLLECT_SECONDS,
    EngineError,
    EngineOverloaded,
    Recognizer,
)
from earshot.events import InvalidSessionId, SessionId, parse_session_id
from earshot.gateways import lagging
from earshot.gateways.g711 import dumping, messages, registrations, releasing
from earshot.gateways.g711.messages import CloseCode
from earshot.gateways.g711.transcribing import GATEWAY, SpoolFull, Stores, Transcription
from earshot.persistence import leasing
from earshot.persistence.records import OutOfRange
from earshot.persistence.spool import SpoolError
from earshot.settings import Settings
from earshot.storage.ports import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """What the gateway needs at run time, opened by the caller and closed by it."""

    recognizer: Recognizer
    stores: Stores


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stream ends early: the error message the client gets and the close code."""

    code: str
    message: str
    close_code: CloseCode
    retryable: bool = False
    reason: str = ""

    def to_message(self) -> messages.ErrorMessage:
        return messages.error(self.code, self.message, retryable=self.retryable)


OVERLOADED = Refusal(
    "inference_overloaded",
    messages.OVERLOAD_MESSAGE,
    CloseCode.TRY_AGAIN_LATER,
    retryable=True,
    reason=messages.OVERLOAD_REASON,
)

SPOOL_FULL = Refusal(
    "spool_full",
    messages.SPOOL_FULL_MESSAGE,
    CloseCode.TRY_AGAIN_LATER,
    retryable=True,
    reason=messages.SPOOL_FULL_REASON,
)


TAKEN_OVER = Refusal(
    "session_taken_over",
    "a newer connection of this session took over; this one ends and its last segment is stored",
    CloseCode.NORMAL,
    reason="session taken over",
)

LEASE_LOST = Refusal(
    "session_taken_over",
    "another gateway process took this session over (this one could not renew its lease in "
    "time); this connection ends and its last segment is stored",
    CloseCode.NORMAL,
    reason="session taken over",
)

# Once the gateway shuts down, a stream still reads what its client sent, but stops at a pause of
# this long between frames or this long after the shutdown began (a client sending in real time
# while recognition runs slower than real time would never pause), then tells its last finals and
# closes with 1012. Well within the persister sidecar's own shutdown deadline (10 s by default),
# which must still store those finals.
SHUTDOWN_GAP_SECONDS = 0.25
SHUTDOWN_READ_SECONDS = 2.0

# A new connection of a session waits this long for the session's previous connection to end
# (its last segment recognised and stored), then is refused.
HANDOVER_WAIT_SECONDS = 30.0


SHUTTING_DOWN = Refusal(
    "shutting_down",
    "this gateway is shutting down: the stream ends after its last final; reconnect with the same "
    "session id to continue",
    CloseCode.SERVICE_RESTART,
    retryable=True,
    reason="service restart",
)


@dataclass(slots=True)
class _Occupant:
    """A session's connection in this process, until its last segment is stored (``ended``)."""

    websocket: WebSocket
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # The handler's task, cancelled by stop() only while it waits for a frame.
    task: asyncio.Task[Any] | None = field(default_factory=asyncio.current_task)
    stopping: bool = False
    receiving: bool = False
    # When stop() was called (monotonic seconds).
    stopped_at: float = 0.0
    # Why stop() ends the stream: the gateway shutting down, or the session ending (pools).
    reason: Refusal = SHUTTING_DOWN
    # A pool's: the TranscriptionSession (namespace/name) whose registration admitted it.
    resource: str | None = None

    def stop(self, reason: Refusal = SHUTTING_DOWN) -> None:
        """Ask the stream to end (after its last finals) as the gateway shuts down, or for
        ``reason``."""
        self.reason = reason
        self.stopping = True
        self.stopped_at = time.monotonic()
        if self.receiving and self.task is not None:
            self.task.cancel()


class LiveSessions:
    """The sessions streaming in this process, each until its last segment is stored."""

    def __init__(self) -> None:
        """None yet."""
        self.by_id: dict[SessionId, _Occupant] = {}
        self.draining = False
        # Connections being admitted, by session: not yet streaming, nor told they are refused.
        self._deciding: collections.Counter[SessionId] = collections.Counter()
        self._none_deciding = asyncio.Event()
        self._none_deciding.set()

    def held(self) -> int:
        """The sessions this process streams or is admitting: what the load limit counts (a
        connection taking its session over counts once with the one it takes over)."""
        return len(self.by_id.keys() | self._deciding.keys())

    @contextlib.contextmanager
    def deciding(self, session_id: SessionId) -> Iterator[None]:
        """A connection from its arrival until it streams or has been told why not; a drain waits
        for it, so a connection waiting for admission when the shutdown begins is still accepted
        and told (1012) rather than answered by the server's own HTTP 500."""
        self._deciding[session_id] += 1
        self._none_deciding.clear()
        try:
            yield
        finally:
            self._deciding[session_id] -= 1
            if not self._deciding[session_id]:
                del self._deciding[session_id]
            if not self._deciding:
                self._none_deciding.set()

    async def drain(self) -> None:
        """End every stream for a shutdown: each recognises what it holds, tells the client its
        last finals and closes with 1012, so a reconnecting client hears every number. Connections
        still being admitted are refused with 1012 first (one that takes over a session's older
        connection waits for that one, which ends here)."""
        self.draining = True
        for occupant in list(self.by_id.values()):
            occupant.stop()
        await self._none_deciding.wait()
        occupants = list(self.by_id.values())
        for occupant in occupants:
            if not occupant.stopping:
                occupant.stop()
        await asyncio.gather(*(occupant.ended.wait() for occupant in occupants))

    def end(self, lost: registrations.Registration, why: str) -> None:
        """End the stream a lost registration admitted, if it has one here, as a drain does: its
        client hears its last finals and then that the session ended (``why``). A stream of the
        same session id admitted under another resource's registration goes on."""
        session_id = lost.session_id
        occupant = self.by_id.get(session_id)
        if occupant is not None and occupant.resource == lost.resource and not occupant.stopping:
            log.info("session %s: ending its stream: %s", session_id, why)
            occupant.stop(session_ended(session_id, why))


def session_ended(session_id: SessionId, why: str) -> Refusal:
    """The end of a pooled session's stream because the session itself ended."""
    return Refusal(
        "session_ended",
        f"session {session_id} has ended ({why}): the stream ends after its last final",
        CloseCode.NORMAL,
        reason="session ended",
    )


def create_app(
    settings: Settings,
    services: Services,
    live_sessions: LiveSessions | None = None,
    lag: lagging.LagMonitor | None = None,
    registry: registrations.Registry | None = None,
) -> FastAPI:
    """Build the gateway app around opened services (see :func:`earshot.gateways.g711.serving`).

    ``/health`` answers 503 once the spool writer or the embedded drainer stopped working, so a
    liveness probe restarts the process. ``live_sessions`` lets the server drain the streams
    before it shuts down. While ``lag`` (run by the server) says the process is behind real time,
    new streams are refused with 1013. A pool gateway (``settings.pool``) admits the sessions of
    its ``registry``, each with its own token and settings.
    """
    app = FastAPI(title="earshot telephony gateway")
    engine = services.recognizer.name
    metrics.initialise_gateway(GATEWAY, engine)
    sessions = live_sessions if live_sessions is not None else LiveSessions()
    live = sessions.by_id

    @app.get("/health")
    async def health(response: Response) -> dict[str, Any]:
        # status, config, project_name and model_status: the keys and values the older server's
        # probes read (its "config" is the word "loaded"); what this process runs is under
        # "settings".
        body: dict[str, Any] = {
            "status": "ok",
            "config": "loaded",
            "project_name": settings.project_name,
            "model_status": "loaded",
            "engine": engine,
            "settings": public_config(settings),
        }
        if not services.stores.journal.healthy:
            response.status_code = 503
            body.update(status="failing", reason="persistence stopped working")
        return body

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if _wants_json(request.headers.get("accept", "")):
            return JSONResponse(metrics.snapshot())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/json")
    async def json_metrics() -> dict[str, Any]:
        return metrics.snapshot()

    @app.websocket("/ws/transcribe/{session_id}")
    async def transcribe(websocket: WebSocket, session_id: str) -> None:
        # Admission comes before the handshake: a connection whose handshake completes without an
        # error following it is admitted, and its first frame is accepted audio (see
        # docs/pools.md). A refused one is still accepted, then told why at once: the protocol's
        # error message and close code, the first thing the server sends.
        sid = SessionId(session_id)
        with sessions.deciding(sid):
            admitted, own, resource = await _decide(
                websocket, sid, settings, sessions, lag, registry, engine
            )
            if not admitted:
                return
            # No await since _decide's last check: two connections cannot both pass it.
            occupant = live[sid] = _Occupant(websocket, resource=resource)
        try:
            await _stream(occupant, sid, own, services)
        finally:
            occupant.ended.set()
            del live[sid]
            if not live:
                releasing.release_freed_memory()

    return app


async def _decide(
    websocket: WebSocket,
    sid: SessionId,
    settings: Settings,
    sessions: LiveSessions,
    lag: lagging.LagMonitor | None,
    registry: registrations.Registry | None,
    engine: str,
) -> tuple[bool, Settings, str | None]:
    """Admit a connection, then complete its handshake; or complete it and tell it why not.

    Returns:
        Whether it may stream now, the settings it streams with (a pooled session's own) and, on
        a pool, the resource whose registration admitted it.
    """
    refusal = SHUTTING_DOWN if sessions.draining else _admission(websocket, sid, settings)
    if refusal is None and lag is not None and lag.lagging():
        refusal = OVERLOADED  # behind real time: the streams it holds keep their latency
    own, resource = settings, None
    if refusal is None and registry is not None:
        own, resource, refusal = await _pool_admission(websocket, sid, registry, settings)
    live = sessions.by_id
    if refusal is None:
        refusal = _over_cap(live, sid, settings)
    if not await _accept(websocket):  # the client left while it waited to be admitted
        if refusal is not None:
            _count(refusal, engine)
        return False, own, resource
    if refusal is None:
        # A reconnect takes its session over after the handshake: the wait for the older
        # connection's last segment may outlast a client's handshake timeout.
        refusal = await _capacity(live, sid, settings, engine)
    if refusal is None and registry is not None and _admitter(registry, sid) != resource:
        refusal = session_ended(sid, "its registration was withdrawn while this connection waited")
    if refusal is None and sessions.draining:  # the drain began while this one waited
        refusal = SHUTTING_DOWN
    if refusal is not None:
        _count(refusal, engine)
        await _close(websocket, refusal)
        return False, own, resource
    return True, own, resource


def _admitter(registry: registrations.Registry, sid: SessionId) -> str | None:
    """The resource registering ``sid`` now (None: none, or more than one)."""
    try:
        found = registry.find(sid)
    except registrations.NotAdmitted:
        return None
    return None if found is None else found.resource


def public_config(settings: Settings) -> dict[str, Any]:
    """The settings a health probe may see: how audio is taken and recognised, no secrets."""
    return {
        "engine": settings.engine,
        "model": str(settings.model_dir) if settings.model_dir else None,
        "demo_model": settings.model_dir is None and not settings.triton_url,
        "triton_url": settings.triton_url or None,
        "audio_codec": settings.audio_codec.value,
        "audio_rate": settings.audio_rate,
        "return_transcription": settings.return_transcription,
        "bad_frame_policy": settings.bad_frame_policy,
        "inference_workers": settings.inference_workers,
        "inference_queue_size": settings.inference_queue_size,
        "inference_queue_timeout_seconds": settings.inference_queue_timeout_seconds,
        "endpoint_rules_seconds": [
            settings.endpoint_silence_without_text_seconds,
            settings.endpoint_silence_after_text_seconds,
            settings.endpoint_max_segment_seconds,
        ],
        "auth": "none" if settings.required_token() is None else "token",
    }


def _wants_json(accept: str) -> bool:
    """Whether an Accept header asks for JSON before (or instead of) text."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "application/json" in kinds and not any(
        kind.startswith("text/") for kind in kinds[: kinds.index("application/json")]
    )


def _admission(websocket: WebSocket, raw_session_id: str, settings: Settings) -> Refusal | None:
    try:
        parse_session_id(raw_session_id)
    except InvalidSessionId as exc:
        return Refusal("invalid_session_id", str(exc), CloseCode.POLICY_VIOLATION)
    token = settings.required_token()
    if token is not None and not _authorized(websocket, token):
        return Refusal(
            "unauthorized",
            "this session needs its access token: send 'Authorization: Bearer <token>' "
            "or the 'token' query parameter",
            CloseCode.POLICY_VIOLATION,
        )
    # After the token check: only a client the session admits learns which id it serves.
    if settings.session_id is not None and raw_session_id != settings.session_id:
        return Refusal(
            "session_not_served",
            f"this gateway serves only session {settings.session_id!r}, not "
            f"{raw_session_id!r}: connect to /ws/transcribe/{settings.session_id}",
            CloseCode.POLICY_VIOLATION,
        )
    return None


async def _pool_admission(
    websocket: WebSocket,
    session_id: SessionId,
    registry: registrations.Registry,
    settings: Settings,
) -> tuple[Settings, str | None, Refusal | None]:
    """A pool gateway's admission: the session is registered and the client has its token; then
    the session's own settings and the resource that registered it."""
    try:
        registration = await registry.admit(
            session_id, _offered(websocket), wait=settings.registration_wait_seconds
        )
    except registrations.NotAdmitted as refused:
        return settings, None, Refusal(refused.code, str(refused), CloseCode.POLICY_VIOLATION)
    return registration.settings, registration.resource, None


def _over_cap(
    live: dict[SessionId, _Occupant], session_id: SessionId, settings: Settings
) -> Refusal | None:
    """The connection cap, before the handshake: a session's older connection, which this one
    takes over, leaves its place to it (:func:`_capacity` checks again once it has)."""
    if len(live) - (session_id in live) >= settings.max_connections:
        return _too_many(settings)
    return None


def _too_many(settings: Settings) -> Refusal:
    return Refusal(
        "too_many_connections",
        f"this gateway is serving its limit of {settings.max_connections} streams; retry later",
        CloseCode.TRY_AGAIN_LATER,
        retryable=True,
        reason="too many connections",
    )


async def _accept(websocket: WebSocket) -> bool:
    """Complete the handshake; False when the client is already gone."""
    try:
        await websocket.accept()
    except (WebSocketDisconnect, RuntimeError, OSError):
        log.info("client left before its handshake completed")
        return False
    return True


async def _capacity(
    live: dict[SessionId, _Occupant], session_id: SessionId, settings: Settings, engine: str
) -> Refusal | None:
    """Take a session over from its older connection, or refuse a stream over the connection cap.

    A session streams on one connection at a time: two would both be told the same numbers for
    different texts. A client that reconnects has given its older connection up (often one whose
    network died unnoticed), so the newer connection takes over: the older one is closed with
    ``session_taken_over``, its last segment is recognised and stored, and then the newer one
    continues the numbering after it. Should that take over ``HANDOVER_WAIT_SECONDS``, the newer
    one is refused (retryable).
    """
    older = live.get(session_id)
    if older is not None:
        if older.websocket.application_state is WebSocketState.CONNECTED:
            _count(TAKEN_OVER, engine)
            await _close(older.websocket, TAKEN_OVER)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(older.ended.wait(), HANDOVER_WAIT_SECONDS)
    if session_id in live:
        return _in_use(session_id, "still finishing on another connection")
    if len(live) >= settings.max_connections:
        return _too_many(settings)
    return None


def _in_use(session_id: SessionId, where: str) -> Refusal:
    return Refusal(
        "session_in_use",
        f"session {session_id} is {where}; retry later",
        CloseCode.TRY_AGAIN_LATER,
        retryable=True,
        reason="session in use",
    )


def _authorized(websocket: WebSocket, token: str) -> bool:
    return hmac.compare_digest(_offered(websocket).encode(), token.encode())


def _offered(websocket: WebSocket) -> str:
    """The token the client sent (Bearer header, else the ``token`` query parameter)."""
    header = websocket.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    return credentials if scheme.lower() == "bearer" else websocket.query_params.get("token", "")


async def _stream(
    occupant: _Occupant, session_id: SessionId, settings: Settings, services: Services
) -> None:
    websocket = occupant.websocket
    engine = services.recognizer.name
    try:
        transcription = await Transcription.open(
            session_id,
            services.recognizer,
            codec=settings.audio_codec,
            source_rate=settings.audio_rate,
            stores=services.stores,
            user_id=settings.user_id,
            language=settings.declared_language(),
        )
    except StorageError as exc:
        # The segment store cannot tell where the session's numbering goes on (a MariaDB outage):
        # refused at open; streams already open go on spooling their finals.
        log.warning("session %s: refused at open, its last seq cannot be read: %s", session_id, exc)
        await _close(websocket, _storage_refusal(exc))
        return
    except leasing.SessionInUse as exc:
        log.info("%s", exc)
        in_use = _in_use(session_id, "streaming through another gateway process")
        _count(in_use, engine)
        await _close(websocket, in_use)
        return
    active = metrics.ACTIVE_STREAMS.labels(GATEWAY, engine)
    active.inc()
    finished = False
    started, end = time.monotonic(), "error"
    try:
        refusal = await _pump(occupant, transcription, settings)
        end = "client" if refusal is None else refusal.code
        if occupant.stopping and refusal is occupant.reason:
            # The client is still there: it hears its last finals, then why the stream ends.
            finished = True
            await _send(websocket, await _finish(transcription, engine), settings)
        if refusal is not None:
            # Otherwise the client hears why at once; finishing then takes no queue slot, but may
            # wait for a worker.
            _count(refusal, engine)
            await _close(websocket, refusal)
    finally:
        try:
            if not finished:
                # Client gone or refused: it can no longer receive these finals, but they are
                # stored.
                await _finish(transcription, engine)
        finally:
            active.dec()
            metrics.STREAM_DURATION.labels(GATEWAY, end).observe(time.monotonic() - started)
            last_seq = transcription.next_seq - 1
            await services.stores.journal.close_session(session_id, last_seq=last_seq)


async def _finish(transcription: Transcription, engine: str) -> list[messages.ServerMessage]:
    """Recognise what the stream holds and spool its finals; nothing (logged) when that fails."""
    try:
        return await transcription.finish()
    except (StorageError, SpoolError, OutOfRange) as exc:
        metrics.STORAGE_ERRORS.labels("spool").inc()
        log.error("session %s: could not spool its last segment: %s", transcription.session_id, exc)
    except EngineError as exc:
        metrics.ENGINE_ERRORS.labels(GATEWAY, engine).inc()
        log.error(
            "session %s: recognition failed while finishing: %s", transcription.session_id, exc
        )
    return []


async def _pump(
    occupant: _Occupant, transcription: Transcription, settings: Settings
) -> Refusal | None:
    """Move frames into the transcription until the client leaves, a frame is refused or the
    gateway shuts down.

    A client that has started closing can no longer be sent to, but the frames it sent before its
    close are still read and recognised: its audio is stored all the same.
    """
    dump = (
        dumping.AudioDump.for_connection(
            settings.debug_audio_dir,
            transcription.session_id,
            codec=settings.audio_codec,
            rate=settings.audio_rate,
        )
        if settings.debug_audio_dir is not None
        else None
    )
    try:
        return await _pump_frames(occupant, transcription, settings, dump)
    finally:
        if dump is not None:
            dump.close()


async def _pump_frames(
    occupant: _Occupant,
    transcription: Transcription,
    settings: Settings,
    dump: dumping.AudioDump | None,
) -> Refusal | None:
    websocket = occupant.websocket
    meters = transcription.meters
    leases = transcription.stores.journal.leases
    listening = True
    idle = _IdleWatch(occupant, settings.idle_timeout_seconds)
    answers = _AnswerWatch(
        occupant, idle, lambda: transcription.unanswered, lambda: transcription.ready
    )
    transcription.on_answer(answers.answered)
    try:
        while True:
            try:
                event = await _receive(occupant, idle, answers)
            except TimeoutError:
                return occupant.reason if occupant.stopping else _idle(settings)
            if event is None:
                # stop() interrupted a long wait, or answers came (or are still out while the
                # client is quiet)
                if transcription.unanswered:
                    refusal, out = await _step(transcription.collect())
                    if refusal is not None:
                        return refusal
                    if listening and out:
                        listening = await _send(websocket, out, settings)
                        _observe_reply(transcription, time.perf_counter())
                continue
            arrived = time.perf_counter()
            idle.heard()
            if event["type"] == "websocket.disconnect":
                return None
            chunk: bytes | None = event.get("bytes")
            if chunk is None:
                return Refusal(
                    "text_frame_not_supported",
                    "text frames are not part of the protocol: send audio as binary frames",
                    CloseCode.UNSUPPORTED_DATA,
                )
            if len(chunk) > settings.max_frame_bytes:
                return Refusal(
                    "frame_too_large",
                    f"audio frame of {len(chunk)} bytes exceeds the limit of "
                    f"{settings.max_frame_bytes} bytes",
                    CloseCode.MESSAGE_TOO_BIG,
                )
            if leases.lost(transcription.session_id):
                return LEASE_LOST
            meters.frames.inc()
            meters.audio_bytes.inc(len(chunk))
            meters.audio_seconds.inc(
                duration_seconds(len(chunk), settings.audio_codec, settings.audio_rate)
            )
            try:
                refusal, out = await _step(transcription.feed(chunk, arrived))
            except InvalidAudio as exc:
                if settings.bad_frame_policy == "refuse":
                    return Refusal("invalid_audio", str(exc), CloseCode.INVALID_PAYLOAD)
                # The older server's way: drop the frame, keep the stream.
                metrics.FRAMES_SKIPPED.labels(GATEWAY, "invalid_audio").inc()
                log.debug("session %s: frame skipped: %s", transcription.session_id, exc)
                continue
            if refusal is not None:
                return refusal
            if dump is not None:
                dump.write(chunk)
            if listening and out:
                listening = await _send(websocket, out, settings)
                _observe_reply(transcription, arrived)
    finally:
        transcription.on_answer(None)
        idle.close()
        answers.close()


def _observe_reply(transcription: Transcription, arrived: float) -> None:
    """Time the reply just sent from the chunk behind it (``arrived``: this call's chunk)."""
    replied_for = transcription.replied_for
    cause = arrived if replied_for is None else replied_for
    transcription.meters.reply_latency.observe(time.perf_counter() - cause)


async def _step(
    recognising: Awaitable[list[messages.ServerMessage]],
) -> tuple[Refusal | None, list[messages.ServerMessage]]:
    """What a transcription call returned, or why the stream ends when it raised."""
    try:
        return None, await recognising
    except EngineOverloaded:
        return OVERLOADED, []
    except SpoolFull:
        return SPOOL_FULL, []
    except EngineError as exc:
        engine_error = Refusal(
            "engine_error", f"recognition failed: {exc}", CloseCode.INTERNAL_ERROR, retryable=True
        )
        return engine_error, []
    except (StorageError, SpoolError) as exc:
        return _storage_refusal(exc), []
    except OutOfRange as exc:
        out_of_range = Refusal(
            "result_out_of_range", f"a result cannot be stored: {exc}", CloseCode.INTERNAL_ERROR
        )
        return out_of_range, []


class _IdleWatch:
    """A stream's idle timeout: one timer per timeout period, not one per frame.

    It counts from the last frame heard and, once that is ``seconds`` ago, interrupts the stream's
    task only while it waits for a frame (as :meth:`_Occupant.stop` does); :func:`_receive` then
    raises ``TimeoutError``.
    """

    def __init__(self, occupant: _Occupant, seconds: float) -> None:
        """Start watching ``occupant``'s task."""
        self._occupant = occupant
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._heard = self._loop.time()
        self.fired = False
        self._timer = self._loop.call_at(self._heard + seconds, self._check)

    def heard(self) -> None:
        """A frame came (the only per-frame cost: no timer is touched)."""
        self._heard = self._loop.time()

    @property
    def heard_at(self) -> float:
        """When the last frame came (the event loop's clock), or the watch began."""
        return self._heard

    def close(self) -> None:
        """Stop watching."""
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        due = self._heard + self._seconds
        task = self._occupant.task
        if now < due or task is None:
            self._timer = self._loop.call_at(due, self._check)
            return
        if not self._occupant.receiving or self._occupant.stopping or task.cancelling():
            # Busy with the last frame, or shutting down (which has its own bounds): look again
            # shortly; a frame that comes meanwhile moves the deadline.
            self._timer = self._loop.call_at(now + _IDLE_RECHECK_SECONDS, self._check)
            return
        self.fired = True
        task.cancel()


_IDLE_RECHECK_SECONDS = 0.05


class _AnswerWatch:
    """Wakes a stream's task from its wait for a frame to collect the answers a pipelined recogniser
    (Triton) returns after the call that sent their chunk: at once when the recogniser says one
    came (:meth:`answered` is its listener), and once the client has sent no frame for
    :data:`~earshot.engines.recognizers.QUIET_COLLECT_SECONDS` while answers are out (the client
    may be waiting for its last final; a request that timed out fails the stream then). While
    answers stay out, the quiet wake comes again each such period (not at once: a Triton slow to
    answer must not make the task spin). As :class:`_IdleWatch`, one timer at a time, not one per
    frame.
    """

    def __init__(
        self,
        occupant: _Occupant,
        idle: _IdleWatch,
        unanswered: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        """Watch ``occupant``'s task, from the frames ``idle`` hears."""
        self._occupant = occupant
        self._idle = idle
        self._unanswered = unanswered
        self._ready = ready
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._woke_at = self._loop.time()
        self.fired = False

    def expect(self) -> bool:
        """The task is about to wait for a frame: False when an answer is ready (collect it
        first: it came while the task was busy); else watch the wait if answers are out."""
        if self._ready():
            return False
        if self._timer is None and self._unanswered():
            self._timer = self._loop.call_at(self._due(), self._check)
        return True

    def answered(self) -> None:
        """An answer came: wake the task if it waits for a frame (if busy, it sees it in
        :meth:`expect`)."""
        if self._occupant.receiving and not self._occupant.stopping:
            self._wake()

    def _due(self) -> float:
        """A period after the last frame, or after the last time it woke the task."""
        return max(self._idle.heard_at, self._woke_at) + QUIET_COLLECT_SECONDS

    def close(self) -> None:
        """Stop watching."""
        if self._timer is not None:
            self._timer.cancel()

    def _check(self) -> None:
        self._timer = None
        task = self._occupant.task
        if task is None or self._occupant.stopping or not self._unanswered():
            return  # answered meanwhile (the next wait looks again), or ending: finish tells all
        now = self._loop.time()
        due = self._due()
        if now < due:
            self._timer = self._loop.call_at(due, self._check)  # a frame came meanwhile
        elif not self._occupant.receiving or task.cancelling():
            self._timer = self._loop.call_at(now + _IDLE_RECHECK_SECONDS, self._check)
        else:
            self._woke_at = now
            self._wake()

    def _wake(self) -> None:
        task = self._occupant.task
        if task is None or self.fired or task.cancelling():
            return  # woken already, or being cancelled for another reason
        self.fired = True
        task.cancel()


async def _receive(occupant: _Occupant, idle: _IdleWatch, answers: _AnswerWatch) -> Message | None:
    """The next message; None when stop() interrupted the wait for it, or answers are to be
    collected (ready, or the answer watch woke the wait).

    Raises:
        TimeoutError: none within the idle timeout or, once stopping, the shutdown bounds.
    """
    occupant.receiving = True
    try:
        if not occupant.stopping:
            if not answers.expect():
                return None
            return await occupant.websocket.receive()
        left = occupant.stopped_at + SHUTDOWN_READ_SECONDS - time.monotonic()
        if left <= 0:
            raise TimeoutError
        async with asyncio.timeout(min(SHUTDOWN_GAP_SECONDS, left)):
            return await occupant.websocket.receive()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None:
            raise
        if idle.fired:
            task.uncancel()  # the idle watch interrupted the wait for a frame, nothing else
            raise TimeoutError from None
        if answers.fired:
            answers.fired = False
            if task.uncancel() == 0:
                return None  # the answer watch did, nothing else: answers are due
            # cancelled for another reason too: handled as that
        if not occupant.stopping:
            raise
        task.uncancel()  # stop() cancelled the wait for a frame, nothing else
        return None
    finally:
        occupant.receiving = False


async def _send(
    websocket: WebSocket, out: list[messages.ServerMessage], settings: Settings
) -> bool:
    """Send results unless the session asked for none; False when the client is gone."""
    if not settings.return_transcription or not out:
        return True
    if websocket.client_state is not WebSocketState.CONNECTED:
        return False
    try:
        for message in out:
            await websocket.send_json(message)
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False
    return True


async def _close(websocket: WebSocket, refusal: Refusal) -> None:
    if websocket.client_state is not WebSocketState.CONNECTED:
        return
    try:
        await websocket.send_json(refusal.to_message())
        await websocket.close(code=refusal.close_code, reason=refusal.reason or refusal.code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        log.info("client left before the error %s could be sent", refusal.code)


def _count(refusal: Refusal, engine: str) -> None:
    if refusal is SHUTTING_DOWN or refusal.code == "session_ended":
        return  # the process or the session ending, not the stream failing
    if refusal is OVERLOADED:
        metrics.OVERLOAD_REJECTIONS.labels(GATEWAY, engine).inc()
    elif refusal is SPOOL_FULL:
        metrics.SPOOL_FULL_REJECTIONS.labels(GATEWAY).inc()
    elif refusal.code == "idle_timeout":
        metrics.IDLE_CLOSES.labels(GATEWAY).inc()
    elif refusal.code == "engine_error":
        metrics.ENGINE_ERRORS.labels(GATEWAY, engine).inc()
    elif refusal.code in ("session_in_use", "session_taken_over", "too_many_connections"):
        metrics.CONNECTION_REJECTIONS.labels(GATEWAY, refusal.code).inc()
    elif refusal.code != "storage_unavailable":
        metrics.PROTOCOL_ERRORS.labels(GATEWAY, refusal.code).inc()


def _idle(settings: Settings) -> Refusal:
    # 1000: ending a silent stream is the gateway doing its job, not a failure; the client may
    # reconnect with the same id and the numbering goes on.
    return Refusal(
        "idle_timeout",
        f"no audio for {settings.idle_timeout_seconds:g} s (EARSHOT_IDLE_TIMEOUT_SECONDS): the "
        "stream is closed and what was recognised is stored",
        CloseCode.NORMAL,
        retryable=True,
        reason="idle timeout",
    )


def _storage_refusal(exc: StorageError | SpoolError) -> Refusal:
    metrics.STORAGE_ERRORS.labels("spool" if isinstance(exc, SpoolError) else "segments").inc()
    return Refusal(
        "storage_unavailable",
        f"results cannot be stored right now: {exc}",
        CloseCode.INTERNAL_ERROR,
        retryable=True,
    )
