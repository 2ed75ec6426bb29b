"""Typed views of TranscriptionSession and TalkRoom objects: pure, no I/O.

The API server already validated and defaulted the spec against the CRD schema; these parsers
still apply the same defaults so that builders work on objects written before a default existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from earshot_operator import resources
from earshot_operator.settings import SecretKeyRef


class SpecError(ValueError):
    """The resource cannot be turned into a gateway (the schema let something through)."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """The custom resource that owns the objects built for it."""

    kind: resources.Kind
    name: str
    namespace: str
    uid: str
    generation: int


@dataclasses.dataclass(frozen=True)
class Storage:
    """Per-resource overrides of the storage Secrets (None: the operator's settings)."""

    redis_url_secret: SecretKeyRef | None = None
    mysql_url_secret: SecretKeyRef | None = None


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """What a TranscriptionSession asks for."""

    session_id: str
    user_id: str
    engine: str
    codec: str
    rate: int
    language: str
    return_transcription: bool
    idle_timeout_seconds: int
    auth: str
    active: bool
    storage: Storage


@dataclasses.dataclass(frozen=True)
class RoomSpec:
    """What a TalkRoom asks for."""

    room_token: str
    hpb_url: str
    nextcloud_url: str
    internal_secret: SecretKeyRef
    languages: tuple[str, ...]
    engine: str
    active: bool
    storage: Storage


def parse_owner(body: Mapping[str, Any]) -> Owner:
    """The owner identity of a custom resource's body.

    Raises:
        SpecError: the kind is not one the operator serves.
    """
    meta = body["metadata"]
    kind = resources.KINDS.get(body.get("kind", ""))
    if kind is None:
        raise SpecError(f"not an earshot resource: kind {body.get('kind')!r}")
    return Owner(
        kind=kind,
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation", 1)),
    )


def parse_session(body: Mapping[str, Any]) -> SessionSpec:
    """The spec of a TranscriptionSession; the session id defaults to the resource's name."""
    spec = body.get("spec") or {}
    audio = spec.get("audio") or {}
    return SessionSpec(
        session_id=spec.get("sessionId") or body["metadata"]["name"],
        user_id=spec.get("userId", ""),
        engine=spec.get("engine", "paraformer"),
        codec=audio.get("codec", "alaw"),
        rate=int(audio.get("rate", 8000)),
        language=spec.get("language", "auto"),
        return_transcription=bool(spec.get("returnTranscription", True)),
        idle_timeout_seconds=int(spec.get("idleTimeoutSeconds", 300)),
        auth=spec.get("auth", "token"),
        active=bool(spec.get("active", True)),
        storage=_parse_storage(spec.get("storage") or {}),
    )


def parse_room(body: Mapping[str, Any]) -> RoomSpec:
    """The spec of a TalkRoom.

    Raises:
        SpecError: a required field is missing.
    """
    spec = body.get("spec") or {}
    try:
        secret = spec["internalSecretRef"]
        return RoomSpec(
            room_token=spec["roomToken"],
            hpb_url=spec["hpbUrl"],
            nextcloud_url=spec["nextcloudUrl"],
            internal_secret=SecretKeyRef(
                name=secret["name"], key=secret.get("key", "internal-secret")
            ),
            languages=tuple(spec.get("languages") or ("en",)),
            engine=spec.get("engine", "kyutai"),
            active=bool(spec.get("active", True)),
            storage=_parse_storage(spec.get("storage") or {}),
        )
    except KeyError as missing:
        raise SpecError(f"TalkRoom spec lacks {missing.args[0]}") from None


def _parse_storage(storage: Mapping[str, Any]) -> Storage:
    def ref(field: str) -> SecretKeyRef | None:
        value = storage.get(field)
        return SecretKeyRef(name=value["name"], key=value["key"]) if value else None

    return Storage(
        redis_url_secret=ref("redisUrlSecretRef"), mysql_url_secret=ref("mysqlUrlSecretRef")
    )
