"""Typed views of TranscriptionSession and TalkRoom objects: pure, no I/O.

The API server already validated and defaulted the spec against the CRD schema; these parsers
still apply the same defaults so that builders work on objects written before a default existed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from earshot_operator import dataplane, resources
from earshot_operator.settings import DEDICATED, SecretKeyRef


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
    #: ``spec.placement``: a pool's name, :data:`DEDICATED`, or None (the operator's default).
    placement: str | None = None


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
    """The spec of a TranscriptionSession; the session id defaults to the resource's name.

    Raises:
        SpecError: what the gateway would refuse at start-up (the schema cannot check a session
            id taken from the resource's name, nor objects written under an older schema).
    """
    spec = body.get("spec") or {}
    audio = spec.get("audio") or {}
    parsed = SessionSpec(
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
        placement=_parse_placement(spec.get("placement") or {}),
    )
    _check_session(parsed, named=not spec.get("sessionId"))
    return parsed


def _parse_placement(placement: Mapping[str, Any]) -> str | None:
    pool, dedicated = placement.get("pool"), placement.get("dedicated")
    if pool and dedicated:
        raise SpecError(
            f"spec.placement names pool {pool!r} and dedicated: true; choose one of them"
        )
    if dedicated:
        return DEDICATED
    return str(pool) if pool else None


def _check_session(spec: SessionSpec, *, named: bool) -> None:
    """Refuse what the gateway's settings would refuse, so the status says it before a pod fails."""
    if not re.fullmatch(dataplane.SESSION_ID_PATTERN, spec.session_id):
        source = "the resource name (spec.sessionId is unset)" if named else "spec.sessionId"
        raise SpecError(
            f"session id {spec.session_id!r} from {source} is not a valid session id: at most "
            f"{dataplane.SESSION_ID_MAX_LENGTH} characters of letters, digits, '.', '_', ':' and "
            "'-', starting with a letter or digit; set spec.sessionId"
        )
    if len(spec.user_id) > dataplane.USER_ID_MAX_LENGTH:
        raise SpecError(
            f"spec.userId is {len(spec.user_id)} characters long; sessions.user_id holds at most "
            f"{dataplane.USER_ID_MAX_LENGTH}"
        )
    languages = dataplane.ENGINE_LANGUAGES.get(spec.engine, ())
    if spec.language not in (dataplane.AUTO_LANGUAGE, *languages):
        raise SpecError(
            f"engine {spec.engine} cannot recognise language {spec.language!r}: it recognises "
            f"{' and '.join(languages)} by itself; use "
            f"{', '.join((dataplane.AUTO_LANGUAGE, *languages))}"
        )


def parse_room(body: Mapping[str, Any]) -> RoomSpec:
    """The spec of a TalkRoom.

    Raises:
        SpecError: a required field is missing, or the engine cannot recognise a language.
    """
    spec = body.get("spec") or {}
    try:
        secret = spec["internalSecretRef"]
        parsed = RoomSpec(
            room_token=spec["roomToken"],
            hpb_url=spec["hpbUrl"],
            nextcloud_url=spec["nextcloudUrl"],
            internal_secret=SecretKeyRef(
                name=secret["name"], key=secret.get("key", "internal-secret")
            ),
            languages=tuple(spec.get("languages") or ("en",)),
            engine=spec.get("engine", "paraformer"),
            active=bool(spec.get("active", True)),
            storage=_parse_storage(spec.get("storage") or {}),
        )
    except KeyError as missing:
        raise SpecError(f"TalkRoom spec lacks {missing.args[0]}") from None
    _check_room(parsed)
    return parsed


def _check_room(spec: RoomSpec) -> None:
    """Refuse languages the engine cannot recognise: the gateway would caption in another
    language and label it with the one asked for (it refuses them at start-up)."""
    known = dataplane.ENGINE_LANGUAGES.get(spec.engine, ())
    unknown = [code for code in spec.languages if code not in known]
    if unknown:
        raise SpecError(
            f"engine {spec.engine} cannot recognise language {', '.join(map(repr, unknown))} "
            f"(spec.languages): it recognises {' and '.join(known)} by itself and cannot be "
            f"steered; offer only {', '.join(known)}"
        )


def _parse_storage(storage: Mapping[str, Any]) -> Storage:
    def ref(field: str) -> SecretKeyRef | None:
        value = storage.get(field)
        return SecretKeyRef(name=value["name"], key=value["key"]) if value else None

    return Storage(
        redis_url_secret=ref("redisUrlSecretRef"), mysql_url_secret=ref("mysqlUrlSecretRef")
    )
