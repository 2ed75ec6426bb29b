"""What to run for a resource: a kind-neutral gateway description built from a spec. Pure.

A :class:`Gateway` says which command runs, with which settings and Secrets, under which name;
``manifests`` turns it into Kubernetes objects. Both kinds meet here so the builders never
branch on the kind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from earshot_operator import dataplane, resources, specs
from earshot_operator.dataplane import Env
from earshot_operator.settings import OperatorSettings, SecretKeyRef

_MAX_NAME = 63
_TOKEN_SUFFIX = "-token"


@dataclasses.dataclass(frozen=True)
class Gateway:
    """One gateway Deployment's worth of decisions, before any manifest is written."""

    owner: specs.Owner
    name: str
    command: tuple[str, ...]
    health_path: str
    liveness_path: str
    engine: str
    config: Mapping[str, str]
    secret_env: tuple[tuple[str, SecretKeyRef], ...]
    replicas: int
    endpoint: str
    #: The pod's own service account (a room's gateway reads its TalkRoom); None: no API access.
    service_account: str | None = None
    #: The session's path on the Ingress host, and its URL from outside (None: no Ingress).
    ingress_path: str | None = None
    external_endpoint: str | None = None
    #: The operator's Helm release, stamped on every object (empty: none stamped).
    release: str = ""

    @property
    def token_secret(self) -> str:
        """Name of the Secret holding this gateway's access token."""
        return self.name[: _MAX_NAME - len(_TOKEN_SUFFIX)] + _TOKEN_SUFFIX


def build(body: Mapping[str, Any], settings: OperatorSettings) -> Gateway:
    """The gateway a TranscriptionSession or TalkRoom body asks for.

    Raises:
        specs.SpecError: the body cannot be built.
    """
    owner = specs.parse_owner(body)
    if owner.kind is resources.SESSION:
        return for_session(owner, specs.parse_session(body), settings=settings)
    return for_room(owner, specs.parse_room(body), settings=settings)


def object_name(kind: resources.Kind, name: str) -> str:
    """A DNS-1035 label (Service names need one) unique per kind and resource name.

    Resource names may be 253 characters and contain dots; long ones keep a hash suffix.
    """
    base = f"{kind.short}-" + re.sub(r"[^a-z0-9-]", "-", name.lower())
    if len(base) <= _MAX_NAME:
        return base.rstrip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return base[: _MAX_NAME - 9].rstrip("-") + "-" + digest


def for_session(
    owner: specs.Owner, spec: specs.SessionSpec, *, settings: OperatorSettings
) -> Gateway:
    """The G.711 gateway that serves one TranscriptionSession."""
    name = object_name(owner.kind, owner.name)
    # the G.711 gateway listens on EARSHOT_HOST:EARSHOT_PORT (a room's gateway has its Talk port)
    config = {Env.PORT: str(settings.gateway_port), **session_config(spec)}
    path = dataplane.SESSION_WS_PATH.format(session_id=spec.session_id)
    gateway = _gateway(
        owner,
        name=name,
        command=dataplane.SESSION_COMMAND,
        health_path=dataplane.SESSION_HEALTH_PATH,
        liveness_path=dataplane.SESSION_LIVENESS_PATH,
        engine=spec.engine,
        config=config,
        extra_secrets=(),
        storage=spec.storage,
        token=spec.auth == "token",
        active=spec.active,
        endpoint=f"ws://{name}.{owner.namespace}.svc:{settings.gateway_port}{path}",
        settings=settings,
    )
    if not settings.gateway_ingress_host:
        return gateway
    scheme = "wss" if settings.gateway_ingress_tls_secret else "ws"
    external = f"{scheme}://{settings.gateway_ingress_host}{path}"
    return dataclasses.replace(gateway, ingress_path=path, external_endpoint=external)


def session_config(spec: specs.SessionSpec) -> dict[str, str]:
    """The settings of one session (``dataplane.SESSION_SETTINGS``), as the gateway reads them."""
    config = {
        Env.SESSION_ID: spec.session_id,
        Env.USER_ID: spec.user_id,
        Env.AUDIO_CODEC: spec.codec,
        Env.AUDIO_RATE: str(spec.rate),
        Env.LANGUAGE: spec.language,
        Env.RETURN_TRANSCRIPTION: _flag(spec.return_transcription),
        Env.IDLE_TIMEOUT_SECONDS: str(spec.idle_timeout_seconds),
        Env.AUTH: spec.auth,
    }
    return config


def for_room(owner: specs.Owner, spec: specs.RoomSpec, *, settings: OperatorSettings) -> Gateway:
    """The Talk gateway that captions one TalkRoom."""
    name = object_name(owner.kind, owner.name)
    config = {
        Env.TALK_ROOM_TOKEN: spec.room_token,
        Env.TALK_HPB_URL: spec.hpb_url,
        Env.TALK_NEXTCLOUD_URL: spec.nextcloud_url,
        # The offered set, sorted: the language in use is spec.languages[0], which the gateway
        # follows from its TalkRoom, so putting another language first does not roll the pod.
        Env.TALK_LANGUAGES: ",".join(sorted(set(spec.languages))),
        Env.TALK_APP_PORT: str(settings.gateway_port),  # the ExApp's own port setting
        # The gateway follows this TalkRoom (targets, language, active) and reports to it.
        Env.TALK_NAMESPACE: owner.namespace,
        Env.TALK_TALKROOM_NAME: owner.name,
    }
    gateway = _gateway(
        owner,
        name=name,
        command=dataplane.ROOM_COMMAND,
        health_path=dataplane.ROOM_HEALTH_PATH,
        liveness_path=dataplane.ROOM_LIVENESS_PATH,
        engine=spec.engine,
        config=config,
        extra_secrets=((Env.TALK_INTERNAL_SECRET, spec.internal_secret),),
        storage=spec.storage,
        token=True,
        active=spec.active,
        endpoint=f"http://{name}.{owner.namespace}.svc:{settings.gateway_port}",
        settings=settings,
    )
    return dataclasses.replace(gateway, service_account=name)


def _gateway(
    owner: specs.Owner,
    *,
    name: str,
    command: tuple[str, ...],
    health_path: str,
    liveness_path: str,
    engine: str,
    config: Mapping[str, str],
    extra_secrets: tuple[tuple[str, SecretKeyRef], ...],
    storage: specs.Storage,
    token: bool,
    active: bool,
    endpoint: str,
    settings: OperatorSettings,
) -> Gateway:
    common = {
        Env.HOST: "0.0.0.0",  # a pod serves its Service, not only localhost
        Env.PERSISTER_PORT: str(settings.persister_port),
        Env.ENGINE: engine,
        Env.TRITON_URL: settings.triton_url(engine),
        Env.SPOOL_DIR: dataplane.SPOOL_PATH,
        Env.PERSISTER: dataplane.PERSISTER_MODE,
    }
    secret_env = (
        (Env.PARTIALS_URL, storage.redis_url_secret or settings.redis_url_secret),
        (Env.SEGMENTS_URL, storage.mysql_url_secret or settings.mysql_url_secret),
        *extra_secrets,
    )
    gateway = Gateway(
        owner=owner,
        name=name,
        command=command,
        health_path=health_path,
        liveness_path=liveness_path,
        engine=engine,
        config={**common, **config},
        secret_env=secret_env,
        replicas=1 if active else 0,
        endpoint=endpoint,
        release=settings.release,
    )
    if not token:
        return gateway
    own_token = SecretKeyRef(name=gateway.token_secret, key=dataplane.TOKEN_KEY)
    return dataclasses.replace(gateway, secret_env=((Env.ACCESS_TOKEN, own_token), *secret_env))


def _flag(value: bool) -> str:
    return "true" if value else "false"
