"""The Talk gateway's settings, built once from the environment at start-up and passed down.

Names of the Nextcloud ExApp world stay as AppAPI and the older live-caption app defined them
(PROTOCOLS.md §2: LT_HPB_URL, LT_INTERNAL_SECRET, SKIP_CERT_VERIFY, APP_ID, APP_SECRET, APP_PORT,
NEXTCLOUD_URL); earshot's own knobs are ``EARSHOT_TALK_<FIELD>``. The recogniser itself is configured
by :class:`earshot.settings.Settings`, as for every gateway.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from earshot.settings import ENGINE_LANGUAGES

APP_ID = "live_transcription"
BACKEND_PATH = "/ocs/v2.php/apps/spreed/api/v3/signaling/backend"


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(f"EARSHOT_TALK_{name}", *aliases)


class TalkSettings(BaseSettings):
    """Configuration of a Talk gateway process."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    hpb_url: str = Field(
        "",
        validation_alias=_env("HPB_URL", "LT_HPB_URL"),
        description="The signaling server, e.g. wss://hpb.example.com/standalone-signaling/.",
    )
    internal_secret: SecretStr = Field(
        SecretStr(""),
        validation_alias=_env("INTERNAL_SECRET", "LT_INTERNAL_SECRET"),
        description="The HPB's internal client secret (hello with internal auth).",
    )
    skip_cert_verify: bool = Field(
        False, validation_alias=_env("SKIP_CERT_VERIFY", "SKIP_CERT_VERIFY")
    )
    app_id: str = Field(APP_ID, validation_alias=_env("APP_ID", "APP_ID"))
    app_secret: SecretStr = Field(SecretStr(""), validation_alias=_env("APP_SECRET", "APP_SECRET"))
    app_version: str = Field("0.1.0", validation_alias=_env("APP_VERSION", "APP_VERSION"))
    aa_version: str = Field("3.0.0", validation_alias=_env("AA_VERSION", "AA_VERSION"))
    app_host: str = Field("0.0.0.0", validation_alias=_env("APP_HOST", "APP_HOST"))
    app_port: int = Field(23000, ge=0, le=65535, validation_alias=_env("APP_PORT", "APP_PORT"))
    nextcloud_url: str = Field("", validation_alias=_env("NEXTCLOUD_URL", "NEXTCLOUD_URL"))

    languages: Annotated[tuple[str, ...], NoDecode] = Field(
        ("en",),
        validation_alias=_env("LANGUAGES"),
        description="Language codes the engine supports (comma-separated); the first is the default.",
    )
    grace_seconds: float = Field(
        10.0,
        ge=0,
        validation_alias=_env("GRACE_SECONDS"),
        description="How long a room without caption targets stays joined before leaving.",
    )
    partial_interval_seconds: float = Field(
        0.3,
        ge=0,
        validation_alias=_env("PARTIAL_INTERVAL_SECONDS"),
        description="Least time between two partial captions of one speaker.",
    )
    speaker_queue_frames: int = Field(
        100,
        ge=1,
        validation_alias=_env("SPEAKER_QUEUE_FRAMES"),
        description="20 ms frames a speaker may have waiting for the recogniser; more are dropped.",
    )
    memory_limit_mb: float = Field(
        2048.0,
        gt=0,
        validation_alias=_env("MEMORY_LIMIT_MB"),
        description="Estimated memory all rooms may use; a room past it is refused with 503.",
    )
    room_memory_mb: float = Field(16.0, ge=0, validation_alias=_env("ROOM_MEMORY_MB"))
    speaker_memory_mb: float = Field(
        20.0,
        ge=0,
        validation_alias=_env("SPEAKER_MEMORY_MB"),
        description="Estimate per speaker (bench/reports/talk_speakers.md measures it).",
    )
    expected_speakers: int = Field(
        4,
        ge=0,
        validation_alias=_env("EXPECTED_SPEAKERS"),
        description="Speakers a new room counts.",
    )
    reconnect_initial_seconds: float = Field(0.5, gt=0, validation_alias=_env("RECONNECT_INITIAL"))
    reconnect_max_seconds: float = Field(30.0, gt=0, validation_alias=_env("RECONNECT_MAX"))
    signaling_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias=_env("SIGNALING_TIMEOUT_SECONDS")
    )
    in_cluster: bool = Field(
        False,
        validation_alias=_env("IN_CLUSTER"),
        description="True: a transcription request creates or updates a TalkRoom resource.",
    )
    namespace: str = Field("default", validation_alias=_env("NAMESPACE"))
    internal_secret_ref: str = Field(
        "earshot-talk-internal-secret",
        validation_alias=_env("INTERNAL_SECRET_REF"),
        description="Name of the Secret holding the internal secret (TalkRoom spec).",
    )
    engine: str = Field("paraformer", validation_alias=_env("ENGINE"))
    accept_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("ACCEPT_TIMEOUT_SECONDS"),
        description="In a cluster: how long a request waits for the operator to accept the TalkRoom.",
    )
    room_token: str = Field(
        "",
        validation_alias=_env("ROOM_TOKEN"),
        description="Room mode: the one room this process joins by itself (set by the operator).",
    )
    talkroom_name: str = Field(
        "",
        validation_alias=_env("TALKROOM_NAME"),
        description="Room mode: the TalkRoom this process follows and reports to.",
    )
    kube_api_url: str = Field(
        "https://kubernetes.default.svc",
        validation_alias=_env("KUBE_API_URL"),
        description="The Kubernetes API server (in a pod: the default Service).",
    )
    service_account_dir: str = Field(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        validation_alias=_env("SERVICE_ACCOUNT_DIR"),
        description="Folder holding the service account's token and ca.crt.",
    )
    status_interval_seconds: float = Field(
        1.0,
        gt=0,
        validation_alias=_env("STATUS_INTERVAL_SECONDS"),
        description="Room mode: how often the room's state is compared with its TalkRoom status.",
    )

    # Live translation, HaRP and start-up checks (issue 14).
    translation_poll_seconds: float = Field(
        0.2,
        gt=0,
        validation_alias=_env("TRANSLATION_POLL_SECONDS"),
        description="How often a scheduled TaskProcessing translation is polled.",
    )
    translation_timeout_seconds: float = Field(
        60.0,
        gt=0,
        validation_alias=_env("TRANSLATION_TIMEOUT_SECONDS"),
        description="How long a translation may take before the final is sent untranslated no more.",
    )
    translation_queue_finals: int = Field(
        32,
        ge=1,
        validation_alias=_env("TRANSLATION_QUEUE_FINALS"),
        description="Finals a target language may have waiting for translation; more are dropped.",
    )
    translation_languages_ttl_seconds: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("TRANSLATION_LANGUAGES_TTL_SECONDS"),
        description="How long the TaskProcessing task types (the translation languages) are cached.",
    )
    hp_shared_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=_env("HP_SHARED_KEY", "HP_SHARED_KEY"),
        description="Set by AppAPI's HaRP daemon: serve on the unix socket and run frpc.",
    )
    hp_frp_address: str = Field("", validation_alias=_env("HP_FRP_ADDRESS", "HP_FRP_ADDRESS"))
    hp_frp_port: int = Field(
        8782, ge=1, le=65535, validation_alias=_env("HP_FRP_PORT", "HP_FRP_PORT")
    )
    harp_socket: str = Field(
        "/tmp/exapp.sock",
        validation_alias=_env("HARP_SOCKET"),
        description="The unix socket HaRP's frpc forwards to (HaRP expects /tmp/exapp.sock).",
    )
    frpc_path: str = Field(
        "frpc",
        validation_alias=_env("FRPC_PATH"),
        description="HaRP mode: the frp client binary (HaRP's image ships it; PyPI/Debian do not).",
    )
    frp_cert_dir: str = Field(
        "/certs/frp",
        validation_alias=_env("FRP_CERT_DIR"),
        description="HaRP mode: client.crt, client.key and ca.crt for TLS to HaRP, when present.",
    )

    @property
    def harp(self) -> bool:
        """True when AppAPI deployed us through HaRP (HP_SHARED_KEY is set)."""
        return bool(self.hp_shared_key.get_secret_value())

    def refusal(self) -> str:
        """Why this ExApp must not start ("" when it may), in one line.

        The model is checked as for every server (``loading.require_model``). A room's gateway
        is configured by the operator, which checks its TalkRoom: "" for it.
        """
        if self.room_mode:
            return ""
        missing = [
            name
            for name, value in (
                ("APP_SECRET", self.app_secret.get_secret_value()),
                ("LT_HPB_URL", self.hpb_url),
                ("LT_INTERNAL_SECRET", self.internal_secret.get_secret_value() or self.in_cluster),
            )
            if not value
        ]
        if self.harp and not self.hp_frp_address:
            missing.append("HP_FRP_ADDRESS (HaRP mode)")
        if not missing:
            return ""
        return "the Talk ExApp cannot start without " + ", ".join(missing)

    @field_validator("languages", mode="before")
    @classmethod
    def _split_languages(cls, value: object) -> object:
        if isinstance(value, str):
            codes = tuple(code.strip() for code in value.split(",") if code.strip())
            if not codes:
                raise ValueError("at least one language code is needed")
            return codes
        return value

    @model_validator(mode="after")
    def _room_mode_needs_its_talkroom(self) -> TalkSettings:
        if self.room_token and not self.talkroom_name:
            raise ValueError(
                "EARSHOT_TALK_ROOM_TOKEN needs EARSHOT_TALK_TALKROOM_NAME: a room gateway follows"
                " its TalkRoom"
            )
        if self.room_token and self.in_cluster:
            raise ValueError(
                "EARSHOT_TALK_ROOM_TOKEN (a room's gateway) and EARSHOT_TALK_IN_CLUSTER (the ExApp"
                " that creates TalkRooms) exclude each other"
            )
        return self

    def captioning_engine(self, recognizing: str) -> str:
        """The engine whose captions this process offers: the TalkRooms' engine
        (``EARSHOT_TALK_ENGINE``) for the ExApp in a cluster, else ``recognizing`` (the process's own
        ``EARSHOT_ENGINE``; the operator sets it for a room's gateway)."""
        return self.engine if self.in_cluster and not self.room_mode else recognizing

    def language_refusal(self, engine: str) -> str:
        """Why ``engine`` cannot caption every language offered ("" when it can).

        A caption carries ``langId`` = the room's language; neither engine can be steered to one,
        so a language it does not recognise would only mislabel its captions (as
        ``EARSHOT_LANGUAGE`` is refused for a session).
        """
        known = ENGINE_LANGUAGES.get(engine, ())
        unknown = [code for code in self.languages if code not in known]
        if not unknown:
            return ""
        return (
            f"engine {engine} cannot recognise language {', '.join(map(repr, unknown))} "
            f"(EARSHOT_TALK_LANGUAGES): it recognises {' and '.join(known)} by itself and cannot "
            f"be steered; offer only {', '.join(known)}"
        )

    @property
    def room_mode(self) -> bool:
        """True in the gateway the operator runs for one TalkRoom."""
        return bool(self.room_token)

    @property
    def signaling_url(self) -> str:
        """The WebSocket URL of the signaling endpoint (``.../spreed``), ws or wss."""
        url = self.hpb_url.rstrip("/")
        if url.startswith("http"):
            url = "ws" + url[len("http") :]
        return url if url.endswith("/spreed") else f"{url}/spreed"

    @property
    def backend_url(self) -> str:
        """The backend URL the internal hello names (it must match the HPB's configuration)."""
        return self.nextcloud_url.rstrip("/") + BACKEND_PATH
