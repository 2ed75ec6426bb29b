"""The one settings object of a data-plane process, built from the environment at start-up.

Every environment read of the data plane happens here. Names are ``EARSHOT_<FIELD>``; the variable
names of the telephony server earshot replaces stay accepted as aliases (PROTOCOLS.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from earshot.audio.codecs import Codec
from earshot.events import InvalidSessionId, parse_session_id

SOURCE_RATES = (8000, 16000)
#: A copy of ``earshot_operator.dataplane.ENGINE_LANGUAGES`` (checked equal by a test): what
#: ``EARSHOT_LANGUAGE`` may say per engine besides ``auto``. Neither engine can be steered to one
#: language; both recognise theirs as they come, so the value declares (it is stored as
#: ``sessions.language``), and others are refused.
ENGINE_LANGUAGES = {"paraformer": ("zh", "en"), "kyutai": ("en", "fr")}
AUTO_LANGUAGE = "auto"
DEFAULT_IDLE_TIMEOUT_SECONDS = 300.0
#: Read from the working directory, as the older telephony server did; the environment wins.
ENV_FILE = ".env"
#: What the older telephony server stored as ``sessions.user_id`` (it took no user id from clients).
LEGACY_USER_ID = "websocket_client"


@dataclass(frozen=True, slots=True)
class Default:
    """A setting's default in earshot, and the older telephony server's where it differed."""

    earshot: Any
    legacy: Any


#: The one table of the defaults that differ between earshot and the older telephony server. The
#: legacy column applies when the environment (or ``.env``) uses any of :data:`LEGACY_NAMES`: a
#: user who swaps earshot in with the old ``.env`` keeps the behaviour that file was written for.
DEFAULTS: Mapping[str, Default] = {
    "host": Default("127.0.0.1", "0.0.0.0"),
    "project_name": Default("earshot", "PyStreamASR"),
    "inference_queue_timeout_seconds": Default(2.0, 20.0),
    "endpoint_silence_without_text_seconds": Default(2.4, 3.0),
    "endpoint_silence_after_text_seconds": Default(1.0, 1.2),
    "endpoint_max_segment_seconds": Default(20.0, 300.0),
    "bad_frame_policy": Default("refuse", "skip"),
    "user_id": Default(None, LEGACY_USER_ID),
}

#: Names only the older telephony server's configuration uses. APP_HOST, APP_PORT and LOG_LEVEL are
#: aliases too but do not count: AppAPI gives the Talk ExApp APP_HOST and APP_PORT, and LOG_LEVEL is
#: too common a name to mean "the old server's .env".
LEGACY_NAMES = (
    "MYSQL_DATABASE_URL",
    "MODEL_PATH",
    "RETURN_TRANSCRIPTION",
    "AUDIO_INPUT_FORMAT",
    "AUDIO_SOURCE_RATE",
    "ASR_INFERENCE_WORKERS",
    "ASR_INFERENCE_QUEUE_SIZE",
    "ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS",
    "REDIS_URL",
    "LOG_DIR",
    "PROJECT_NAME",
    "APP_WORKERS",
)


@dataclass(frozen=True, slots=True)
class EngineOnly:
    """A setting only one engine reads, and only in process: through Triton the model reads its
    own ``parameters`` in ``model-repo/<model>/config.pbtxt`` (``triton_parameter``; None where
    Triton's own scheduling takes the setting's place)."""

    engine: str
    triton_parameter: str | None


#: Every setting one engine path reads and the others would ignore. Given for another engine, or
#: with EARSHOT_TRITON_URL, it is refused at start-up: a setting is honoured or refused, never
#: silently dropped.
# Settings only the Triton client reads (honoured with EARSHOT_TRITON_URL, refused without it).
_TRITON_ONLY = frozenset(
    {
        "triton_keepalive_seconds",
        "triton_request_timeout_seconds",
        "triton_reconnect_timeout_seconds",
    }
)

ENGINE_ONLY: Mapping[str, EngineOnly] = {
    "endpoint_silence_without_text_seconds": EngineOnly("paraformer", "rule1_min_trailing_silence"),
    "endpoint_silence_after_text_seconds": EngineOnly("paraformer", "rule2_min_trailing_silence"),
    "endpoint_max_segment_seconds": EngineOnly("paraformer", "rule3_min_utterance_length"),
    "inference_threads": EngineOnly("paraformer", "num_threads"),
    "inference_workers": EngineOnly("paraformer", None),
    "inference_queue_size": EngineOnly("paraformer", None),
    "inference_queue_timeout_seconds": EngineOnly("paraformer", None),
    "max_inference_load": EngineOnly("paraformer", None),
    "kyutai_device": EngineOnly("kyutai", "device"),
    "kyutai_max_streams": EngineOnly("kyutai", "max_streams"),
    "kyutai_pause_seconds": EngineOnly("kyutai", "pause_seconds"),
    "kyutai_pause_threshold": EngineOnly("kyutai", "pause_threshold"),
}
#: The key under which :class:`_LegacyDefaults` tells validation which fields it filled.
_LEGACY_FILLED = "earshot_legacy_defaults_filled"


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(f"EARSHOT_{name}", *aliases)


def default_cache_dir() -> Path:
    """Where models and the embedded database live when nothing else is configured."""
    return Path.home() / ".cache" / "earshot"


class Settings(BaseSettings):
    """Configuration of the gateway (and, later, the persister) process."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
    )

    host: str = Field(DEFAULTS["host"].earshot, validation_alias=_env("HOST", "APP_HOST"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=_env("PORT", "APP_PORT"))
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", validation_alias=_env("LOG_LEVEL", "LOG_LEVEL")
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        validation_alias=_env("LOG_FORMAT"),
        description="text for people, json (one object per line) for log shippers.",
    )
    log_dir: Path | None = Field(
        None,
        validation_alias=_env("LOG_DIR", "LOG_DIR"),
        description="When set, logs also go to <dir>/earshot.log.",
    )
    project_name: str = Field(
        DEFAULTS["project_name"].earshot,
        validation_alias=_env("PROJECT_NAME", "PROJECT_NAME"),
        description="Name reported as project_name by /health.",
    )
    workers: int = Field(
        1,
        ge=1,
        validation_alias=_env("WORKERS", "APP_WORKERS"),
        description="Telephony gateway processes sharing one port (SO_REUSEPORT), each with its "
        "own recogniser and event loop: one pod then uses that many cores. The Talk ExApp runs "
        "one.",
    )
    reuse_port: bool = Field(
        False,
        validation_alias=_env("REUSE_PORT"),
        description="Listen with SO_REUSEPORT, so that several processes share the port "
        "(EARSHOT_WORKERS sets it for its workers).",
    )

    access_token: SecretStr | None = Field(
        None,
        validation_alias=_env("ACCESS_TOKEN"),
        description="When set, clients must send it (Bearer header or ?token=); unset: no auth.",
    )

    audio_codec: Codec = Field(
        Codec.ALAW,
        validation_alias=_env("AUDIO_CODEC", "AUDIO_INPUT_FORMAT"),
        description="Encoding of the client's binary frames: alaw, ulaw or pcm16le.",
    )
    audio_rate: int = Field(
        8000,
        validation_alias=_env("AUDIO_RATE", "AUDIO_SOURCE_RATE"),
        description="Sample rate of the client's audio in Hz.",
    )
    max_frame_bytes: int = Field(
        64_000,
        gt=0,
        validation_alias=_env("MAX_FRAME_BYTES"),
        description="Largest binary frame accepted; larger frames end the stream with 1009.",
    )
    bad_frame_policy: Literal["refuse", "skip"] = Field(
        DEFAULTS["bad_frame_policy"].earshot,
        validation_alias=_env("BAD_FRAME_POLICY"),
        description="A frame that cannot be decoded: refuse ends the stream (1007); skip drops the "
        "frame, counts it and goes on.",
    )
    debug_audio_dir: Path | None = Field(
        None,
        validation_alias=_env("DEBUG_AUDIO_DIR"),
        description="When set, each connection's received audio is written there as a WAV.",
    )
    max_connections: int = Field(
        500,
        ge=1,
        validation_alias=_env("MAX_CONNECTIONS"),
        description="WebSocket streams one gateway process serves at once; more are refused "
        "(1013 too_many_connections).",
    )
    max_lag_seconds: float = Field(
        0.5,
        ge=0,
        validation_alias=_env("MAX_LAG_SECONDS"),
        description="While the gateway process is further behind real time than this (event-loop "
        "lag or the age of audio waiting for the recogniser, sustained over 1 s), new streams are "
        "refused (1013 inference_overloaded) so that the streams it holds keep their latency; "
        "0: never refuse for lag.",
    )
    max_inference_load: float = Field(
        0.9,
        ge=0,
        validation_alias=_env("MAX_INFERENCE_LOAD"),
        description="Telephony gateway with the in-process Paraformer: a new stream is refused "
        "(1013 inference_overloaded) when the streams the gateway holds, those being admitted and "
        "it included, would keep the inference workers busier than this share of the time (each "
        "stream costing what a second of audio cost to decode over the last 5 s of decoding, the "
        "last such figure while idle; measured from start-up by a warm-up decode), before the "
        "backlog makes every stream late; 0: never refuse for load.",
    )
    handshake_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("HANDSHAKE_TIMEOUT_SECONDS"),
        description="A connection that has not sent its whole HTTP request (the WebSocket "
        "upgrade) within this is closed.",
    )
    return_transcription: bool = Field(
        True,
        validation_alias=_env("RETURN_TRANSCRIPTION", "RETURN_TRANSCRIPTION"),
        description="False: recognise and store, but send nothing to the client.",
    )

    engine: Literal["paraformer", "kyutai"] = Field(
        "paraformer",
        validation_alias=_env("ENGINE"),
        description="paraformer (sherpa-onnx, 16 kHz) or kyutai (moshi, 24 kHz; needs the kyutai extra).",
    )
    model_dir: Path | None = Field(
        None,
        validation_alias=_env("MODEL_DIR", "MODEL_PATH"),
        description="Directory with encoder/decoder ONNX files and tokens.txt; used as given.",
    )
    demo_model: bool = Field(
        False,
        validation_alias=_env("DEMO_MODEL"),
        description="With no model directory and no Triton URL, use the tiny random-weight model "
        "(it makes up words); false: such a server refuses to start.",
    )
    endpoint_silence_without_text_seconds: float = Field(
        DEFAULTS["endpoint_silence_without_text_seconds"].earshot,
        gt=0,
        validation_alias=_env("ENDPOINT_SILENCE_WITHOUT_TEXT_SECONDS"),
        description="Paraformer endpoint rule 1: silence that ends a segment with no text yet.",
    )
    endpoint_silence_after_text_seconds: float = Field(
        DEFAULTS["endpoint_silence_after_text_seconds"].earshot,
        gt=0,
        validation_alias=_env("ENDPOINT_SILENCE_AFTER_TEXT_SECONDS"),
        description="Paraformer endpoint rule 2: silence after text that ends a segment.",
    )
    endpoint_max_segment_seconds: float = Field(
        DEFAULTS["endpoint_max_segment_seconds"].earshot,
        gt=0,
        validation_alias=_env("ENDPOINT_MAX_SEGMENT_SECONDS"),
        description="Paraformer endpoint rule 3: a segment this long ends regardless.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, validation_alias=_env("CACHE_DIR"))
    inference_workers: int = Field(
        1,
        ge=1,
        validation_alias=_env("INFERENCE_WORKERS", "ASR_INFERENCE_WORKERS"),
        description="Threads that run the recogniser (each decodes a batch of streams at a time).",
    )
    inference_queue_size: int = Field(
        256,
        ge=1,
        validation_alias=_env("INFERENCE_QUEUE_SIZE", "ASR_INFERENCE_QUEUE_SIZE"),
        description=(
            "Chunks waiting for inference, all streams together, before clients wait (Paraformer "
            "in process; Kyutai takes one chunk per slot and refuses a stream beyond its slots)."
        ),
    )
    inference_queue_timeout_seconds: float = Field(
        DEFAULTS["inference_queue_timeout_seconds"].earshot,
        gt=0,
        validation_alias=_env(
            "INFERENCE_QUEUE_TIMEOUT_SECONDS", "ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS"
        ),
        description=(
            "How long a chunk may wait for a queue slot before the client gets 1013 (Paraformer "
            "in process; Kyutai refuses a stream beyond its slots at once)."
        ),
    )
    inference_threads: int = Field(
        1,
        ge=1,
        validation_alias=_env("INFERENCE_THREADS"),
        description="ONNX Runtime threads per recogniser worker.",
    )

    triton_url: str = Field(
        "",
        validation_alias=_env("TRITON_URL"),
        description="host:port of Triton's gRPC endpoint; empty: run the engine in process.",
    )
    triton_keepalive_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("TRITON_KEEPALIVE_SECONDS"),
        description="Send an empty chunk on a sequence idle this long (below the model's idle timeout).",
    )
    triton_request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("TRITON_REQUEST_TIMEOUT_SECONDS"),
        description="How long a chunk may wait for Triton's responses.",
    )
    triton_reconnect_timeout_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("TRITON_RECONNECT_TIMEOUT_SECONDS"),
        description="How long a chunk waits for a broken Triton connection to come back.",
    )

    kyutai_device: str = Field(
        "cpu", validation_alias=_env("KYUTAI_DEVICE"), description="cpu, cuda or cuda:N."
    )
    kyutai_max_streams: int = Field(
        16,
        ge=1,
        validation_alias=_env("KYUTAI_MAX_STREAMS"),
        description="Batch slots of the Kyutai model: streams decoded together in one step.",
    )
    kyutai_pause_seconds: float = Field(
        2.0,
        gt=0,
        validation_alias=_env("KYUTAI_PAUSE_SECONDS"),
        description="Pause, per the model's VAD head, that ends a segment.",
    )
    kyutai_pause_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        validation_alias=_env("KYUTAI_PAUSE_THRESHOLD"),
        description="VAD pause probability above which a step counts as pause.",
    )

    segments_url: str = Field(
        "",
        validation_alias=_env("SEGMENTS_URL", "MYSQL_DATABASE_URL"),
        description="sqlite:///path or mysql://user:pass@host/db; empty: SQLite in the cache dir.",
    )
    partials_url: str = Field(
        "memory://",
        validation_alias=_env("PARTIALS_URL", "REDIS_URL"),
        description="memory:// or redis://host:port/db.",
    )
    partial_ttl_seconds: int = Field(300, gt=0, validation_alias=_env("PARTIAL_TTL_SECONDS"))

    spool_dir: Path | None = Field(
        None,
        validation_alias=_env("SPOOL_DIR"),
        description="Directory of the durable spool (shared with the persister sidecar); "
        "unset: <cache dir>/spool.",
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        validation_alias=_env("SPOOL_MAX_BYTES"),
        description="Undrained spool bytes above which new audio is refused (1013 spool_full).",
    )
    spool_segment_bytes: int = Field(
        8 * 1024 * 1024,
        gt=0,
        validation_alias=_env("SPOOL_SEGMENT_BYTES"),
        description="Size at which the spool starts its next segment file.",
    )
    # Not EARSHOT_PERSISTER_STALL_SECONDS: the writer's I/O is one batch's write and fsync on a
    # local disk, on the path of every final a client waits for; the drainer's step includes a
    # store write over the network, which may be slow without anything being wrong.
    spool_stall_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("SPOOL_STALL_SECONDS"),
        description="How long one batch's spool write and fsync may take (a disk that stopped "
        "answering, as a hung NFS server) before the gateway's /health fails.",
    )
    persister: Literal["embedded", "sidecar"] = Field(
        "embedded",
        validation_alias=_env("PERSISTER"),
        description="embedded: the gateway drains its spool itself; sidecar: `earshot persister` "
        "does.",
    )
    persister_port: int = Field(
        8001,
        ge=0,
        le=65535,
        validation_alias=_env("PERSISTER_PORT"),
        description="Port of the persister's /health and /metrics.",
    )
    persister_batch_size: int = Field(
        100, ge=1, validation_alias=_env("PERSISTER_BATCH_SIZE"), description="Records per batch."
    )
    persister_poll_seconds: float = Field(
        0.05,
        gt=0,
        validation_alias=_env("PERSISTER_POLL_SECONDS"),
        description="How often an idle persister looks for new spool records.",
    )
    persister_retry_max_seconds: float = Field(
        5.0,
        gt=0,
        validation_alias=_env("PERSISTER_RETRY_MAX_SECONDS"),
        description="Cap of the exponential backoff between retries of a failed store write.",
    )
    persister_stall_seconds: float = Field(
        120.0,
        gt=0,
        validation_alias=_env("PERSISTER_STALL_SECONDS"),
        description="How long a drainer may make no step (a store write or a spool read that "
        "hangs) before /health fails; a store that is down is retried, which is no stall.",
    )
    persister_shutdown_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("PERSISTER_SHUTDOWN_SECONDS"),
        description="On SIGTERM (or gateway stop), how long the persister keeps draining.",
    )
    final_store_wait_seconds: float = Field(
        5.0,
        ge=0,
        validation_alias=_env("FINAL_STORE_WAIT_SECONDS"),
        description="Embedded persister: how long a final waits to be stored before it is sent "
        "anyway (it is durable in the spool).",
    )

    # What a TranscriptionSession sets (the operator's EARSHOT_* of one session). Declared after
    # engine and access_token: the validators below read those.
    session_id: str | None = Field(
        None,
        validation_alias=_env("SESSION_ID"),
        description="When set, the gateway serves only this session id; others are refused (1008).",
    )
    user_id: str | None = Field(
        DEFAULTS["user_id"].earshot,
        max_length=64,
        validation_alias=_env("USER_ID"),
        description="Stored as sessions.user_id of the sessions this gateway opens.",
    )
    language: str = Field(
        AUTO_LANGUAGE,
        validation_alias=_env("LANGUAGE"),
        description="auto, or a language the engine recognises (paraformer: zh, en; kyutai: en, fr); "
        "stored as sessions.language of the sessions this gateway opens (NULL for auto).",
    )
    idle_timeout_seconds: float = Field(
        DEFAULT_IDLE_TIMEOUT_SECONDS,
        gt=0,
        validation_alias=_env("IDLE_TIMEOUT_SECONDS"),
        description="A stream without a frame for this long is closed (1000) and its text stored.",
    )
    auth: Literal["token", "none"] | None = Field(
        None,
        validation_alias=_env("AUTH"),
        description="token: clients must send EARSHOT_ACCESS_TOKEN; none: no token; "
        "unset: a token is needed when one is set.",
    )

    # A pool gateway (the chart's pools): it serves every session registered with its pool.
    pool: str | None = Field(
        None,
        validation_alias=_env("POOL"),
        description="When set, serve the TranscriptionSessions registered with this gateway pool "
        "(followed through the Kubernetes API), each with its own token and settings.",
    )
    kube_api_url: str = Field(
        "https://kubernetes.default.svc",
        validation_alias=_env("KUBE_API_URL"),
        description="Pool mode: the Kubernetes API server (in a pod: the default Service).",
    )
    service_account_dir: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        validation_alias=_env("SERVICE_ACCOUNT_DIR"),
        description="Pool mode: folder holding the service account's token and ca.crt.",
    )
    registration_wait_seconds: float = Field(
        2.0,
        ge=0,
        validation_alias=_env("REGISTRATION_WAIT_SECONDS"),
        description="Pool mode: how long a connection of a session the gateway has not yet heard "
        "of waits for its registration before it is refused (1008 session_not_registered).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over ``.env`` over the older server's defaults (when its names are used)."""
        legacy = _LegacyDefaults(settings_cls, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, legacy

    _legacy_filled: frozenset[str] = PrivateAttr(frozenset())

    @model_validator(mode="wrap")
    @classmethod
    def _engine_settings_reach_the_engine(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        filled: frozenset[str] = frozenset()
        if isinstance(data, dict) and _LEGACY_FILLED in data:
            data = dict(data)
            filled = frozenset(data.pop(_LEGACY_FILLED))
        settings = handler(data)
        settings._legacy_filled = filled
        ignored = [name for name in sorted(settings.given()) if settings._ignores(name)]
        if ignored:
            raise ValueError(settings._not_read(ignored))
        unused = sorted(settings.given() & _TRITON_ONLY) if not settings.triton_url else []
        if unused:
            variables = ", ".join(_variables(name) for name in unused)
            it = "it" if len(unused) == 1 else "them"
            raise ValueError(
                f"{variables} would do nothing: only a process that recognises through Triton "
                f"reads {it}, and EARSHOT_TRITON_URL is not set; set that or unset {it}"
            )
        return settings

    def with_given(self, fields: Mapping[str, Any]) -> Settings:
        """These settings with ``fields`` given on top, validated again as at a process's start.

        What these settings had as a default (earshot's or, with the older server's names, that
        server's) stays a default, which no engine check refuses; ``fields`` count as given.
        """
        filled = sorted(self._legacy_filled - fields.keys())
        data = {**self.model_dump(exclude_unset=True), **fields, _LEGACY_FILLED: filled}
        # Validated into an instance, as __init__ does without reading the environment again:
        # model_validate would reset the private record of the defaults filled in afterwards.
        settings = Settings.__new__(Settings)
        Settings.__pydantic_validator__.validate_python(data, self_instance=settings)
        return settings

    def given(self) -> frozenset[str]:
        """The fields the environment, ``.env`` or the caller set (not a default, old or new)."""
        return frozenset(self.model_fields_set) - self._legacy_filled

    def _ignores(self, name: str) -> bool:
        only = ENGINE_ONLY.get(name)
        return only is not None and (bool(self.triton_url) or only.engine != self.engine)

    def _not_read(self, names: list[str]) -> str:
        """Why the settings ``names`` would do nothing here, and what to do instead."""
        variables = ", ".join(_variables(name) for name in names)
        it = "it" if len(names) == 1 else "them"
        engines = " and ".join(sorted({ENGINE_ONLY[name].engine for name in names}))
        if not self.triton_url:
            return (
                f"{variables} would do nothing: only the {engines} engine in process reads "
                f"{it}, and this process runs {self.engine}; unset {it}"
            )
        parameters = [p for name in names if (p := ENGINE_ONLY[name].triton_parameter)]
        instead = (
            f"; in the model's config.pbtxt, set {', '.join(parameters)}" if parameters else ""
        )
        return (
            f"{variables} would do nothing: only the {engines} engine in process reads {it}, and "
            f"this process recognises through Triton (EARSHOT_TRITON_URL); unset {it}{instead}"
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case_level(cls, value: object) -> object:
        # The older server's .env says LOG_LEVEL=INFO.
        return value.lower() if isinstance(value, str) else value

    @field_validator("session_id")
    @classmethod
    def _valid_session_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_session_id(value)
        except InvalidSessionId as exc:
            raise ValueError(str(exc)) from None

    @field_validator("user_id")
    @classmethod
    def _empty_user_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("language")
    @classmethod
    def _language_of_the_engine(cls, value: str, info: ValidationInfo) -> str:
        engine = info.data.get("engine")
        if not isinstance(engine, str):
            return value  # the engine itself is refused; its error says enough
        known = ENGINE_LANGUAGES[engine]
        if value != AUTO_LANGUAGE and value not in known:
            raise ValueError(
                f"engine {engine} cannot recognise language {value!r}: it recognises "
                f"{' and '.join(known)} by itself and cannot be steered; use "
                f"{', '.join((AUTO_LANGUAGE, *known))}"
            )
        return value

    @field_validator("auth")
    @classmethod
    def _auth_agrees_with_the_token(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_token = info.data.get("access_token") is not None
        if value == "token" and not has_token:
            raise ValueError("auth 'token' needs EARSHOT_ACCESS_TOKEN, which is not set")
        if value == "none" and has_token:
            raise ValueError("auth 'none' but EARSHOT_ACCESS_TOKEN is set: unset one of them")
        return value

    @field_validator("audio_codec", mode="before")
    @classmethod
    def _known_codec(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() not in {c.value for c in Codec}:
            known = ", ".join(c.value for c in Codec)
            raise ValueError(f"unknown audio codec {value!r}; use one of: {known}")
        return value.lower() if isinstance(value, str) else value

    @field_validator("audio_rate")
    @classmethod
    def _known_rate(cls, value: int) -> int:
        if value not in SOURCE_RATES:
            raise ValueError(f"unsupported audio rate {value} Hz; use 8000 or 16000")
        return value

    @model_validator(mode="after")
    def _pool_serves_many_sessions(self) -> Settings:
        if self.pool is not None and (self.session_id is not None or self.access_token):
            raise ValueError(
                "a pool gateway (EARSHOT_POOL) serves many sessions, each with its own token: "
                "unset EARSHOT_SESSION_ID and EARSHOT_ACCESS_TOKEN"
            )
        return self

    def required_token(self) -> str | None:
        """The token clients must send, or None when this gateway admits clients without one."""
        if self.auth == "none" or self.access_token is None:
            return None
        return self.access_token.get_secret_value()

    def declared_language(self) -> str | None:
        """The language sessions are declared to speak (stored as ``sessions.language``); None
        for ``auto``, which declares nothing."""
        return None if self.language == AUTO_LANGUAGE else self.language

    def resolved_spool_dir(self) -> Path:
        """The spool directory, defaulting to ``spool`` in the cache directory."""
        return self.spool_dir or self.cache_dir / "spool"

    def resolved_segments_url(self) -> str:
        """The segment store URL, defaulting to a SQLite file in the cache directory."""
        return self.segments_url or f"sqlite:///{self.cache_dir / 'earshot.sqlite3'}"


class _LegacyDefaults(PydanticBaseSettingsSource):
    """The legacy column of :data:`DEFAULTS`, when the environment or ``.env`` uses an old name."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: PydanticBaseSettingsSource,
        dotenv: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._sources = (env, dotenv)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is decided in __call__

    def __call__(self) -> dict[str, Any]:
        if not self._old_names_used():
            return {}
        # Keyed like the environment source; only what no other source gave, and the validation
        # learns which fields these were (a default is not a setting the user gave).
        filled = {
            name: d.legacy
            for name, d in DEFAULTS.items()
            if f"EARSHOT_{name.upper()}" not in self.current_state
        }
        values: dict[str, Any] = {f"EARSHOT_{name.upper()}": v for name, v in filled.items()}
        return {**values, _LEGACY_FILLED: sorted(filled)}

    def _old_names_used(self) -> bool:
        seen: set[str] = set()
        for source in self._sources:
            if isinstance(source, EnvSettingsSource | DotEnvSettingsSource):
                seen.update(name.upper() for name in source.env_vars)
        return any(name in seen for name in LEGACY_NAMES)


def _variables(name: str) -> str:
    """A field's variable, with the older server's name where it has one: ``EARSHOT_X (OLD)``."""
    alias = Settings.model_fields[name].validation_alias
    names = [str(n) for n in alias.choices] if isinstance(alias, AliasChoices) else [name]
    return names[0] if len(names) == 1 else f"{names[0]} ({', '.join(names[1:])})"
