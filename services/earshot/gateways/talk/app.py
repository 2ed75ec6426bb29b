"""The ExApp's HTTP API (PROTOCOLS.md §2): what AppAPI and Talk call.

Every endpoint but ``/heartbeat`` (and the Prometheus ``/metrics`` scrape) needs AppAPI headers;
success answers ``{"message": "..."}`` and every error ``{"error": "..."}`` with a precise status
(:data:`STATUSES`): 400 bad body, language or language pair, 401 bad headers, 404 unknown room, 412
translation for a participant without captions, 500 a translation failure, 503 signaling
unreachable, memory limit reached or app disabled, 550 no translation provider (Talk stops asking).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from earshot.gateways.talk import appapi, languages, talkrooms
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import (
    AdmissionRefused,
    Rooms,
    UnknownRoom,
    UnsupportedLanguage,
    UnsupportedTranslation,
)
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.gateways.talk.rooms import NotATarget, SameLanguage
from earshot.gateways.talk.signaling import SignalingRefused, SignalingUnavailable
from earshot.gateways.talk.taskprocessing import TranslationFailed, TranslationUnavailable

log = logging.getLogger(__name__)

#: The one table from what went wrong to the status Talk hears.
STATUSES: dict[type[Exception], int] = {
    UnsupportedLanguage: 400,
    UnsupportedTranslation: 400,
    SameLanguage: 400,
    UnknownRoom: 404,
    NotATarget: 412,
    TranslationFailed: 500,
    AdmissionRefused: 503,
    SignalingUnavailable: 503,
    TranslationUnavailable: 550,
}


@dataclass(slots=True)
class Services:
    """What the app needs at run time, opened and closed by its owner."""

    rooms: Rooms
    nextcloud: Nextcloud
    talkrooms: talkrooms.TalkRoomStore | None = None
    enabled: bool = True


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TranscribeRequest(_Body):
    room_token: str = Field(alias="roomToken", min_length=1)
    nc_session_id: str = Field(alias="ncSessionId", min_length=1)
    enable: bool = True
    lang_id: str | None = Field(None, alias="langId")
    translation_target: str | None = Field(None, alias="translationTargetLangId")


class SetTargetLanguageRequest(_Body):
    room_token: str = Field(alias="roomToken", min_length=1)
    nc_session_id: str = Field(alias="ncSessionId", min_length=1)
    lang_id: str | None = Field(alias="langId")


class SetLanguageRequest(_Body):
    room_token: str = Field(alias="roomToken", min_length=1)
    lang_id: str = Field(alias="langId", min_length=1)


class LeaveRequest(_Body):
    room_token: str = Field(alias="roomToken", min_length=1)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _done(message: str) -> JSONResponse:
    return JSONResponse({"message": message})


def _refusal(exc: Exception) -> JSONResponse:
    if isinstance(exc, SignalingRefused):
        status = 404 if exc.code == "no_such_room" else 503
        return _error(status, f"the signaling server refused us: {exc}")
    if isinstance(exc, SignalingUnavailable):
        return _error(503, f"the signaling server is unreachable: {exc}")
    if isinstance(exc, UnknownRoom):
        return _error(404, f"no live transcription in room {exc.args[0]!r}")
    status = next(code for kind, code in STATUSES.items() if isinstance(exc, kind))
    return _error(status, str(exc))


_REFUSED: tuple[type[Exception], ...] = tuple(STATUSES)
_REFUSED_BY_ROOMS: tuple[type[Exception], ...] = (*_REFUSED, SignalingRefused)


def create_app(settings: TalkSettings, services: Services) -> FastAPI:
    """Build the ExApp around opened services."""
    app = FastAPI(title="earshot live_transcription ExApp")
    _install_error_handlers(app)

    def authorized(request: Request) -> str:
        try:
            return appapi.check(
                request.headers,
                app_id=settings.app_id,
                app_secret=settings.app_secret.get_secret_value(),
            )
        except appapi.Unauthorized as exc:
            raise HTTPException(401, str(exc)) from None

    auth = [Depends(authorized)]

    @app.get("/heartbeat")
    async def heartbeat() -> Response:
        journal = services.rooms.journal
        if journal is not None and not journal.healthy:
            # Transcripts are no longer kept: unhealthy, so that the process is restarted.
            return JSONResponse(
                {"status": "error", "error": "the spool or its persister stopped working"},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/init", dependencies=auth)
    async def init() -> dict[str, str]:
        services.nextcloud.start_init(_ready)
        return {}

    async def _ready() -> None:
        # The engine is opened before the app serves; nothing more to fetch here.
        return None

    @app.put("/enabled", dependencies=auth)
    async def set_enabled(enabled: int) -> dict[str, str]:
        services.enabled = bool(enabled)
        if not services.enabled:
            await services.rooms.aclose()
        return {"error": ""}

    @app.get("/enabled", dependencies=auth)
    async def get_enabled() -> dict[str, bool]:
        return {"enabled": services.enabled}

    @app.get("/capabilities", dependencies=auth)
    async def capabilities() -> dict[str, Any]:
        features = ["live_transcription"]
        described: dict[str, Any] = {
            "version": settings.app_version,
            "features": features,
            "live_transcription": {"supported_languages": languages.describe(settings.languages)},
        }
        translation = await _translation_languages(services)
        if translation is not None:
            features.append("live_translation")
            described["live_translation"] = {"supported_translation_languages": translation}
        return {settings.app_id: described}

    @app.get("/api/v1/languages", dependencies=auth)
    async def get_languages() -> dict[str, Any]:
        return languages.describe(settings.languages)

    @app.get("/api/v1/translation/languages", dependencies=auth)
    async def get_translation_languages(roomToken: str = "") -> Response:  # noqa: N803
        translator = services.rooms.translator
        if translator is None:
            return _refusal(TranslationUnavailable("live translation is not available here"))
        try:
            offered = await translator.languages()
        except (TranslationUnavailable, TranslationFailed) as exc:
            return _refusal(exc)
        return JSONResponse(_describe_translation(offered.origin, offered.target))

    @app.post("/api/v1/translation/set-target-language", dependencies=auth)
    async def set_target_language(body: SetTargetLanguageRequest) -> Response:
        if services.talkrooms is not None:
            return _refusal(
                TranslationUnavailable("live translation is not available in a cluster")
            )
        try:
            await services.rooms.translate(body.room_token, body.nc_session_id, body.lang_id)
        except _REFUSED as exc:
            return _refusal(exc)
        if body.lang_id is None:
            return _done("translation turned off; captions in the room's language again")
        return _done(f"finals are translated into {body.lang_id} for this participant")

    @app.post("/api/v1/call/transcribe", dependencies=auth)
    async def transcribe(body: TranscribeRequest) -> Response:
        if not services.enabled:
            return _error(503, "the app is disabled")
        if services.talkrooms is not None:
            if body.translation_target is not None:
                return _refusal(
                    TranslationUnavailable("live translation is not available in a cluster")
                )
            return await _transcribe_in_cluster(settings, services.talkrooms, body)
        try:
            await services.rooms.transcribe(
                body.room_token,
                body.nc_session_id,
                enable=body.enable,
                lang=body.lang_id,
                translate_to=body.translation_target,
            )
        except _REFUSED_BY_ROOMS as exc:
            return _refusal(exc)
        return _done(f"transcription {'enabled' if body.enable else 'disabled'}")

    @app.post("/api/v1/call/set-language", dependencies=auth)
    async def set_language(body: SetLanguageRequest) -> Response:
        if services.talkrooms is not None:
            if body.lang_id not in settings.languages:
                return _error(400, f"language {body.lang_id!r} is not offered")
            return await _change_in_cluster(
                services.talkrooms, body.room_token, language=body.lang_id, active=None
            )
        try:
            services.rooms.set_language(body.room_token, body.lang_id)
        except (UnknownRoom, UnsupportedLanguage) as exc:
            return _refusal(exc)
        return _done(f"captions in {body.lang_id} from now on")

    @app.post("/api/v1/call/leave", dependencies=auth)
    async def leave(body: LeaveRequest) -> Response:
        if services.talkrooms is not None:
            changed = await _change_in_cluster(
                services.talkrooms, body.room_token, language=None, active=False
            )
            # Talk may leave a room we never joined: that is done, not an error.
            return _done("left the call") if changed.status_code == 404 else changed
        try:
            await services.rooms.leave(body.room_token)
        except UnknownRoom:
            return _done(f"not in a call in room {body.room_token!r}")
        return _done("left the call")

    @app.get("/api/v1/status", dependencies=auth)
    async def status() -> Response:
        if services.talkrooms is not None:
            try:
                rooms = await services.talkrooms.states()
            except talkrooms.ClusterError as exc:
                return _error(503, f"cannot read the rooms from the cluster: {exc}")
            return JSONResponse({"enabled": services.enabled, "cluster": True, "rooms": rooms})
        return JSONResponse({"enabled": services.enabled, **services.rooms.status()})

    return app


async def _transcribe_in_cluster(
    settings: TalkSettings, store: talkrooms.TalkRoomStore, body: TranscribeRequest
) -> Response:
    if body.lang_id is not None and body.lang_id not in settings.languages:
        return _error(400, f"language {body.lang_id!r} is not offered")
    spec = talkrooms.TalkRoomSpec(
        room_token=body.room_token,
        hpb_url=settings.hpb_url,
        nextcloud_url=settings.nextcloud_url,
        internal_secret_name=settings.internal_secret_ref,
        languages=settings.languages,
        engine=settings.engine,
        language=body.lang_id,
    )
    try:
        await store.request(spec, session=body.nc_session_id, enable=body.enable)
        # Talk hears 200 only once the operator runs the room: a refused spec is reported now.
        await store.wait_accepted(body.room_token, within=settings.accept_timeout_seconds)
    except talkrooms.ClusterError as exc:
        return _error(503, f"cannot record the room in the cluster: {exc}")
    except talkrooms.NotAccepted as exc:
        return _error(503, str(exc))
    return _done(f"transcription {'enabled' if body.enable else 'disabled'}")


async def _change_in_cluster(
    store: talkrooms.TalkRoomStore, room_token: str, *, language: str | None, active: bool | None
) -> Response:
    try:
        found = await store.change(room_token, language=language, active=active)
    except talkrooms.ClusterError as exc:
        return _error(503, f"cannot update the room in the cluster: {exc}")
    if not found:
        return _error(404, f"no live transcription in room {room_token!r}")
    return _done("the room's TalkRoom is updated")


async def _translation_languages(services: Services) -> dict[str, Any] | None:
    """What capabilities say about translation, or None when there is no provider."""
    translator = services.rooms.translator
    if translator is None or services.talkrooms is not None:
        return None
    try:
        offered = await translator.languages()
    except (TranslationUnavailable, TranslationFailed) as exc:
        log.info("no live translation in the capabilities: %s", exc)
        return None
    return _describe_translation(offered.origin, offered.target)


def _describe_translation(origin: dict[str, str], target: dict[str, str]) -> dict[str, Any]:
    return {
        "origin_languages": languages.describe_named(origin),
        "target_languages": languages.describe_named(target),
    }


def _install_error_handlers(app: FastAPI) -> None:
    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, f"bad request: {problems}")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail))

    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
