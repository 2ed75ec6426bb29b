"""The contract between the operator and the data plane's processes: pure data, no I/O.

Every name the gateway and persister containers depend on (commands, environment variables,
ports, paths, container names) lives here, so the manifest builders and the data plane's
settings (``earshot.settings``, which the operator must not import) meet in one place.
"""

from __future__ import annotations

from typing import Final

GATEWAY_CONTAINER: Final = "gateway"
PERSISTER_CONTAINER: Final = "persister"

#: ``earshot serve`` runs the G.711 WebSocket gateway, ``earshot talk`` the Talk gateway.
SESSION_COMMAND: Final = ("earshot", "serve")
ROOM_COMMAND: Final = ("earshot", "talk")
PERSISTER_COMMAND: Final = ("earshot", "persister")

#: In a pod the persister sidecar drains the spool; the gateway only writes it.
PERSISTER_MODE: Final = "sidecar"
SPOOL_VOLUME: Final = "spool"
SPOOL_PATH: Final = "/var/spool/earshot"
PORT_NAME: Final = "http"
PERSISTER_PORT_NAME: Final = "persister"
#: Readiness endpoints: the G.711 gateway and the persister serve /health; a room's gateway serves
#: /ready, which answers 200 only while it is in its call (/heartbeat only says the process works).
SESSION_HEALTH_PATH: Final = "/health"
ROOM_HEALTH_PATH: Final = "/ready"
PERSISTER_HEALTH_PATH: Final = "/health"
#: Liveness endpoints: each is answered on the process' own event loop, so a wedged loop (a
#: blocking call, a deadlock) lets the probe time out and the kubelet restarts the container.
#: The G.711 gateway's and the persister's /health also fail once their spool work stopped.
SESSION_LIVENESS_PATH: Final = "/health"
ROOM_LIVENESS_PATH: Final = "/heartbeat"
PERSISTER_LIVENESS_PATH: Final = "/health"
SESSION_WS_PATH: Final = "/ws/transcribe/{session_id}"

#: Key of the access token inside the Secret the operator mints per resource.
TOKEN_KEY: Final = "token"


class Env:
    """Environment variable names read by the data plane's settings (``EARSHOT_*``)."""

    HOST: Final = "EARSHOT_HOST"
    PORT: Final = "EARSHOT_PORT"
    PERSISTER_PORT: Final = "EARSHOT_PERSISTER_PORT"
    ACCESS_TOKEN: Final = "EARSHOT_ACCESS_TOKEN"
    AUTH: Final = "EARSHOT_AUTH"
    AUDIO_CODEC: Final = "EARSHOT_AUDIO_CODEC"
    AUDIO_RATE: Final = "EARSHOT_AUDIO_RATE"
    RETURN_TRANSCRIPTION: Final = "EARSHOT_RETURN_TRANSCRIPTION"
    LANGUAGE: Final = "EARSHOT_LANGUAGE"
    IDLE_TIMEOUT_SECONDS: Final = "EARSHOT_IDLE_TIMEOUT_SECONDS"
    SESSION_ID: Final = "EARSHOT_SESSION_ID"
    USER_ID: Final = "EARSHOT_USER_ID"
    ENGINE: Final = "EARSHOT_ENGINE"
    TRITON_URL: Final = "EARSHOT_TRITON_URL"
    SEGMENTS_URL: Final = "EARSHOT_SEGMENTS_URL"
    PARTIALS_URL: Final = "EARSHOT_PARTIALS_URL"
    SPOOL_DIR: Final = "EARSHOT_SPOOL_DIR"
    PERSISTER: Final = "EARSHOT_PERSISTER"
    TALK_APP_PORT: Final = "EARSHOT_TALK_APP_PORT"
    TALK_ROOM_TOKEN: Final = "EARSHOT_TALK_ROOM_TOKEN"
    TALK_HPB_URL: Final = "EARSHOT_TALK_HPB_URL"
    TALK_NEXTCLOUD_URL: Final = "EARSHOT_TALK_NEXTCLOUD_URL"
    TALK_LANGUAGES: Final = "EARSHOT_TALK_LANGUAGES"
    TALK_INTERNAL_SECRET: Final = "EARSHOT_TALK_INTERNAL_SECRET"
    TALK_NAMESPACE: Final = "EARSHOT_TALK_NAMESPACE"
    TALK_TALKROOM_NAME: Final = "EARSHOT_TALK_TALKROOM_NAME"
    #: A pool gateway: the pool it serves (the chart sets it; the operator names the pool in
    #: each registration).
    POOL: Final = "EARSHOT_POOL"


#: The settings of one session: the dedicated gateway gets them in its ConfigMap, a pool's
#: gateways read them from the session's ``status.registration.settings`` (keyed by the same
#: names) and apply them to that session's streams only.
SESSION_SETTINGS: Final = (
    Env.SESSION_ID,
    Env.USER_ID,
    Env.AUDIO_CODEC,
    Env.AUDIO_RATE,
    Env.LANGUAGE,
    Env.RETURN_TRANSCRIPTION,
    Env.IDLE_TIMEOUT_SECONDS,
    Env.AUTH,
)

#: ``status.registration`` of a pooled TranscriptionSession, which the pool's gateways follow
#: (list/watch on TranscriptionSessions): the pool, the session id, the SHA-256 (hex) of the
#: session's token (absent with ``auth: none``) and the session's settings. No registration: the
#: session is not (or no longer) admitted, and a live stream of it ends.
REGISTRATION: Final = "registration"
REGISTRATION_POOL: Final = "pool"
REGISTRATION_SESSION_ID: Final = "sessionId"
REGISTRATION_TOKEN_SHA256: Final = "tokenSha256"
REGISTRATION_SETTINGS: Final = "settings"


#: Which container gets which variable: the one table the pod's environment is split by. The
#: persister sidecar (``earshot persister``) gets only what it reads: its address, the spool and
#: the stores, never the access token or the HPB secret. The gateway gets every variable but those
#: only the persister reads, and a room's gateway (``earshot talk``) none it does not read.
PERSISTER_ENV: Final = frozenset(
    {Env.HOST, Env.PERSISTER_PORT, Env.SPOOL_DIR, Env.PARTIALS_URL, Env.SEGMENTS_URL}
)
PERSISTER_ONLY_ENV: Final = frozenset({Env.PERSISTER_PORT})
#: A room's gateway listens on its Talk address (``EARSHOT_TALK_APP_HOST``, all interfaces by
#: default, and ``EARSHOT_TALK_APP_PORT``), never on ``EARSHOT_HOST``, which its pod has for the
#: persister sidecar.
ROOM_GATEWAY_UNREAD_ENV: Final = frozenset({Env.HOST})


def gets(container: str, variable: str, *, command: tuple[str, ...]) -> bool:
    """Whether ``container`` (:data:`GATEWAY_CONTAINER` or :data:`PERSISTER_CONTAINER`) of a pod
    whose gateway runs ``command`` is given ``variable``."""
    if container == PERSISTER_CONTAINER:
        return variable in PERSISTER_ENV
    if command == ROOM_COMMAND and variable in ROOM_GATEWAY_UNREAD_ENV:
        return False
    return variable not in PERSISTER_ONLY_ENV


#: The session-id rule both sides apply: the gateway to the WebSocket path and its
#: ``EARSHOT_SESSION_ID``, the operator to ``spec.sessionId`` (or the resource name). The
#: ``sessions.id`` column is VARCHAR(64). The CRD's ``sessionId`` pattern is this string and its
#: ``maxLength`` this length; ``earshot.events`` holds a copy; tests check all of them against it.
SESSION_ID_MAX_LENGTH: Final = 64
SESSION_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
#: ``sessions.user_id`` is VARCHAR(64) as well.
USER_ID_MAX_LENGTH: Final = 64

#: What ``EARSHOT_LANGUAGE`` may say per engine. Neither engine can be steered to a language:
#: the bilingual Paraformer and Kyutai's stt-1b-en_fr recognise both of theirs as they come
#: (moshi builds STT models without a language condition), so a value declares what the
#: session's speech is (the data plane stores it as ``sessions.language``), and one the engine
#: cannot recognise is refused.
AUTO_LANGUAGE: Final = "auto"
ENGINE_LANGUAGES: Final = {"paraformer": ("zh", "en"), "kyutai": ("en", "fr")}
