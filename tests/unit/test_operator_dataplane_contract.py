"""The operator and the data plane meet in the environment of the pods: checked from both sides.

From the operator's side: every variable the operator puts into a container is read by the
command that container runs: a setting that command uses, not merely one some settings model
parses (``earshot talk`` parses ``EARSHOT_PORT`` through the shared settings but listens on its
Talk port). What a room's gateway uses of the shared settings is recorded from a run of it. From
the CRD's side: every spec field reaches the gateway (a setting it reads, or a field of the
manifest); each field has its own test below, and a field the table does not know fails. The
operator must not import ``earshot``; this test may.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from earshot.gateways.talk import roomserving
from earshot.gateways.talk.configuration import TalkSettings
from earshot.settings import Settings
from earshot_operator import dataplane, gateways, manifests, pools, resources, specs
from earshot_operator.dataplane import Env
from earshot_operator.settings import OperatorSettings, Pool
from tests.servers import free_port
from tests.settings_reads import recording

CRDS = Path(__file__).resolve().parents[2] / "crds"

#: The settings each data-plane command builds at start-up.
COMMAND_SETTINGS: dict[tuple[str, ...], tuple[type[BaseSettings], ...]] = {
    dataplane.SESSION_COMMAND: (Settings,),
    dataplane.ROOM_COMMAND: (Settings, TalkSettings),
    dataplane.PERSISTER_COMMAND: (Settings,),
}
#: Models a command uses every field of: its own. ``earshot talk`` builds the shared settings too
#: and uses only some of them (:func:`_room_gateway_reads` records which). ``earshot serve`` is the
#: shared settings' own command; what ``earshot persister`` reads is recorded the same way in
#: tests/unit/test_persister_environment.py, which checks its container against exactly that.
OWN_SETTINGS: dict[tuple[str, ...], type[BaseSettings]] = {
    dataplane.SESSION_COMMAND: Settings,
    dataplane.ROOM_COMMAND: TalkSettings,
    dataplane.PERSISTER_COMMAND: Settings,
}


#: What the Secrets hold, as stand-ins that name the Secret and key they come from, so a changed
#: reference changes what the container reads.
SECRET_VALUES = {
    Env.ACCESS_TOKEN: "token-of-{secret}-{key}",
    Env.PARTIALS_URL: "redis://{secret}-{key}:6379/0",
    Env.SEGMENTS_URL: "mysql+aiomysql://u:p@{secret}-{key}/earshot",
    Env.TALK_INTERNAL_SECRET: "hpb-{secret}-{key}",
}


def secret_value(env: str, secret: str, key: str) -> str:
    """The stand-in value of ``env`` taken from key ``key`` of Secret ``secret``."""
    return SECRET_VALUES[env].format(secret=secret, key=key)


def _aliases(model: type[BaseSettings]) -> set[str]:
    names: set[str] = set()
    for field in model.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
    return names


def _field_aliases(model: type[BaseSettings], fields: set[str]) -> set[str]:
    """The variables that set ``fields`` of ``model``."""
    names: set[str] = set()
    for name in fields:
        alias = model.model_fields[name].validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
    return names


async def _room_gateway_reads(env: Mapping[str, str], folder: Path, model_cache: Path) -> set[str]:
    """The shared settings' fields ``earshot talk`` reads as a room's gateway: run in process with
    ``env`` until it serves its probes, then stopped.

    What a pod has of its own is replaced, as tests/e2e/test_talkroom_call.py does: the API server
    (nothing answers here: the gateway retries, as without one), the service account's files, its
    port (a free one), Triton (the in-process engine on the tiny model), the spool (a folder) and
    the segment store (SQLite: the gateway opens it at start). A replaced value is still read.
    """
    account = folder / "sa"
    account.mkdir()
    (account / "token").write_text("token")
    shutil.copy(certifi.where(), account / "ca.crt")
    port = free_port()
    pod = {
        **env,
        "EARSHOT_TALK_KUBE_API_URL": f"https://127.0.0.1:{free_port()}",
        "EARSHOT_TALK_SERVICE_ACCOUNT_DIR": str(account),
        "EARSHOT_TALK_APP_HOST": "127.0.0.1",
        "EARSHOT_TALK_APP_PORT": str(port),
        Env.TRITON_URL: "",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(model_cache),
        Env.SPOOL_DIR: str(folder / "spool"),
        Env.SEGMENTS_URL: f"sqlite:///{folder / 'segments.db'}",
    }
    read: set[str] = set()
    settings, talk = _settings_of(pod, (recording(Settings, read), TalkSettings))
    read.clear()
    serving = asyncio.create_task(roomserving.serve(settings, talk))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(600):
                assert not serving.done(), serving
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/heartbeat")).status_code == httpx.codes.OK:
                        break
                await asyncio.sleep(0.1)
            assert (await http.get("/ready")).json()["talkRoom"] == talk.talkroom_name
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    return set(read)


def own_variables(command: tuple[str, ...]) -> set[str]:
    """The variables of ``command``'s own settings (it uses every field of them)."""
    return _aliases(OWN_SETTINGS[command])


async def _read_by(
    command: tuple[str, ...], env: Mapping[str, str], folder: Path, model_cache: Path
) -> set[str]:
    """The variables ``command`` reads (of those that set a setting it uses)."""
    read = own_variables(command)
    if command == dataplane.ROOM_COMMAND:
        read |= _field_aliases(Settings, await _room_gateway_reads(env, folder, model_cache))
    return read


def _session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "TranscriptionSession",
        "metadata": {"name": "call-9", "namespace": "tel", "uid": "u", "generation": 1},
        "spec": spec,
    }


def _room(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": "TalkRoom",
        "metadata": {"name": "standup", "namespace": "talk", "uid": "u", "generation": 1},
        "spec": {
            "roomToken": "r00m",
            "hpbUrl": "wss://hpb.example/spreed",
            "nextcloudUrl": "https://cloud.example",
            "internalSecretRef": {"name": "hpb"},
            **spec,
        },
    }


@dataclasses.dataclass(frozen=True)
class Built:
    """What the operator builds for one resource, and what its containers make of it."""

    deployment: dict[str, Any]
    configmap: dict[str, str]
    settings: Settings
    talk: TalkSettings | None
    persister: Settings
    #: Where an operator with two pools (``default`` its default) places a session.
    placement: str

    def container(self, name: str) -> dict[str, Any]:
        """One container of the pod template."""
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        found: dict[str, Any] = next(c for c in containers if c["name"] == name)
        return found


def _environment(container: Mapping[str, Any], configmap: Mapping[str, str]) -> dict[str, str]:
    """The environment a container starts with, resolved as the kubelet resolves it (Secrets
    hold stand-ins that name them)."""
    assert "envFrom" not in container  # each variable by name: the container gets what it reads
    env: dict[str, str] = {}
    for entry in container["env"]:
        source = entry["valueFrom"]
        if "configMapKeyRef" in source:
            assert source["configMapKeyRef"]["name"] == configmap["__name__"]
            env[entry["name"]] = configmap[source["configMapKeyRef"]["key"]]
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secret_value(entry["name"], ref["name"], ref["key"])
    return env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the test runner's own environment leaks into the settings built here."""
    for name in _aliases(Settings) | _aliases(TalkSettings):
        monkeypatch.delenv(name, raising=False)


def _settings_of(env: Mapping[str, str], models: tuple[type[BaseSettings], ...]) -> list[Any]:
    with pytest.MonkeyPatch.context() as patch:
        for name in _aliases(Settings) | _aliases(TalkSettings):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return [model() for model in models]


def _configmap(body: dict[str, Any]) -> dict[str, str]:
    """The ConfigMap's data, with its name under ``__name__`` (checked against the references)."""
    made = manifests.build_configmap(gateways.build(body, OperatorSettings()))
    return {**made["data"], "__name__": made["metadata"]["name"]}


def build(body: dict[str, Any]) -> Built:
    """Build the resource's gateway, and the settings each container makes of its environment."""
    settings = OperatorSettings()
    deployment = manifests.build_deployment(gateways.build(body, settings), settings=settings)
    configmap = _configmap(body)
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    gateway = containers[dataplane.GATEWAY_CONTAINER]
    made = _settings_of(
        _environment(gateway, configmap), COMMAND_SETTINGS[tuple(gateway["command"])]
    )
    persister = containers[dataplane.PERSISTER_CONTAINER]
    [persister_settings] = _settings_of(
        _environment(persister, configmap), COMMAND_SETTINGS[tuple(persister["command"])]
    )
    data_plane = next(m for m in made if isinstance(m, Settings))
    talk = next((m for m in made if isinstance(m, TalkSettings)), None)
    return Built(deployment, configmap, data_plane, talk, persister_settings, _placement(body))


POOLS = OperatorSettings(
    pools=(Pool(name="default", address="p:8000"), Pool(name="other", address="o:8000")),
    default_placement="default",
)


def _placement(body: dict[str, Any]) -> str:
    if body["kind"] != resources.SESSION.kind:
        return "none"
    try:
        return pools.place(specs.parse_session(body), body, settings=POOLS).name
    except specs.SpecError as refused:
        return f"refused: {refused}"


# --- from the operator's side: every variable it sets is read ---------------------------------

FULL_SESSION = _session(
    sessionId="call:9",
    userId="alice",
    engine="kyutai",
    audio={"codec": "ulaw", "rate": 16000},
    language="fr",
    returnTranscription=False,
    idleTimeoutSeconds=42,
    auth="token",
    storage={
        "redisUrlSecretRef": {"name": "r", "key": "url"},
        "mysqlUrlSecretRef": {"name": "m", "key": "url"},
    },
)
FULL_ROOM = _room(languages=["zh", "en"], engine="paraformer")


def _containers(body: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    settings = OperatorSettings()
    deployment = manifests.build_deployment(gateways.build(body, settings), settings=settings)
    configmap = _configmap(body)
    return [(c["name"], c, configmap) for c in deployment["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("body", [FULL_SESSION, FULL_ROOM], ids=["session", "room"])
async def test_every_variable_the_operator_sets_is_read_by_its_containers_command(
    body: dict[str, Any], clean_env: None, tmp_path: Path, tiny_model_cache: Path
) -> None:
    containers = _containers(body)
    assert {tuple(container["command"]) for _, container, _ in containers} <= set(OWN_SETTINGS)
    for name, container, configmap in containers:
        env = _environment(container, configmap)
        folder = tmp_path / name
        folder.mkdir()
        read = await _read_by(tuple(container["command"]), env, folder, tiny_model_cache)
        unread = set(env) - read
        assert unread == set(), (
            f"{name} ({' '.join(container['command'])}): the operator sets {sorted(unread)}, "
            "which it does not read"
        )


def test_a_room_gateway_pod_has_its_persisters_address_but_not_the_g711_gateways(
    clean_env: None,
) -> None:
    containers = {name: _environment(c, cm) for name, c, cm in _containers(FULL_ROOM)}
    assert Env.HOST in containers[dataplane.PERSISTER_CONTAINER]
    assert {Env.HOST, Env.PORT} & set(containers[dataplane.GATEWAY_CONTAINER]) == set()


@pytest.mark.parametrize("body", [FULL_SESSION, FULL_ROOM], ids=["session", "room"])
def test_every_container_starts_with_settings_its_command_accepts(
    body: dict[str, Any], clean_env: None
) -> None:
    for _, container, configmap in _containers(body):
        models = COMMAND_SETTINGS[tuple(container["command"])]
        assert _settings_of(_environment(container, configmap), models)  # raises if refused


def test_gateway_environment_configures_the_data_plane_settings(clean_env: None) -> None:
    body = _session(audio={"codec": "ulaw", "rate": 16000}, returnTranscription=False)
    built = build(body)
    settings = built.settings

    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert (str(settings.audio_codec), settings.audio_rate) == ("ulaw", 16000)
    assert settings.return_transcription is False
    assert settings.required_token() == "token-of-tsess-call-9-token-token"
    assert settings.partials_url == "redis://earshot-storage-redis-url:6379/0"
    assert settings.segments_url == "mysql+aiomysql://u:p@earshot-storage-mysql-url/earshot"
    assert settings.persister == "sidecar"
    assert str(settings.resolved_spool_dir()) == "/var/spool/earshot"
    # the session id defaults to the resource's name; the idle timeout to the CRD's 300 s
    assert (settings.session_id, settings.idle_timeout_seconds) == ("call-9", 300)
    assert (settings.language, settings.auth, settings.user_id) == ("auto", "token", None)


def test_room_environment_configures_the_talk_settings(clean_env: None) -> None:
    built = build(_room(languages=["zh", "en"]))
    talk = built.talk

    assert talk is not None
    assert (talk.hpb_url, talk.nextcloud_url) == (
        "wss://hpb.example/spreed",
        "https://cloud.example",
    )
    assert talk.languages == ("en", "zh")  # the offered set; the TalkRoom says which is in use
    assert talk.app_port == 8000
    assert talk.internal_secret.get_secret_value() == "hpb-hpb-internal-secret"
    assert built.settings.persister_port == 8001


# --- from the CRD's side: every spec field has an effect on the gateway it reaches ------------

Probe = Callable[[Built], object]


@dataclasses.dataclass(frozen=True)
class Effect:
    """A non-default value for a spec field and what it must change in what the operator built."""

    value: object
    probe: Probe
    expected: object


def _stores(built: Built) -> tuple[tuple[str, str], tuple[str, str]]:
    """The (partials, segments) URLs the gateway and the persister sidecar each read."""
    return (
        (built.settings.partials_url, built.settings.segments_url),
        (built.persister.partials_url, built.persister.segments_url),
    )


def _storage(field: str, url: Callable[[str], tuple[str, str]]) -> dict[str, Effect]:
    """A storage reference names the Secret both containers read their store's URL from (the
    sibling the test sets is ``x``); tests/integration/test_room_storage.py stores through it."""
    return {
        f"storage.{field}.name": Effect("other", _stores, (url("other-x"),) * 2),
        f"storage.{field}.key": Effect("other-key", _stores, (url("x-other-key"),) * 2),
    }


def _partials(secret: str) -> tuple[str, str]:
    return f"redis://{secret}:6379/0", "mysql+aiomysql://u:p@earshot-storage-mysql-url/earshot"


def _segments(secret: str) -> tuple[str, str]:
    return "redis://earshot-storage-redis-url:6379/0", f"mysql+aiomysql://u:p@{secret}/earshot"


SESSION_FIELDS: dict[str, Effect] = {
    "sessionId": Effect("call:9.a", lambda b: b.settings.session_id, "call:9.a"),
    "userId": Effect("alice", lambda b: b.settings.user_id, "alice"),
    "engine": Effect("kyutai", lambda b: b.settings.engine, "kyutai"),
    "audio.codec": Effect("pcm16le", lambda b: str(b.settings.audio_codec), "pcm16le"),
    "audio.rate": Effect(16000, lambda b: b.settings.audio_rate, 16000),
    # what the gateway stores as sessions.language (tests/unit/test_session_language.py)
    "language": Effect("zh", lambda b: b.settings.declared_language(), "zh"),
    "returnTranscription": Effect(False, lambda b: b.settings.return_transcription, False),
    "idleTimeoutSeconds": Effect(42, lambda b: b.settings.idle_timeout_seconds, 42),
    "auth": Effect("none", lambda b: b.settings.required_token(), None),
    "active": Effect(False, lambda b: b.deployment["spec"]["replicas"], 0),
    "placement.pool": Effect("other", lambda b: b.placement, "pool/other"),
    "placement.dedicated": Effect(True, lambda b: b.placement, "dedicated"),
    **_storage("redisUrlSecretRef", _partials),
    **_storage("mysqlUrlSecretRef", _segments),
}

ROOM_FIELDS: dict[str, Effect] = {
    "roomToken": Effect("other", lambda b: _talk(b).room_token, "other"),
    "hpbUrl": Effect("wss://other/spreed", lambda b: _talk(b).hpb_url, "wss://other/spreed"),
    "nextcloudUrl": Effect("https://other", lambda b: _talk(b).nextcloud_url, "https://other"),
    "internalSecretRef.name": Effect(
        "other", lambda b: _talk(b).internal_secret.get_secret_value(), "hpb-other-x"
    ),
    "internalSecretRef.key": Effect(
        "other-key", lambda b: _talk(b).internal_secret.get_secret_value(), "hpb-hpb-other-key"
    ),
    "languages": Effect(["zh"], lambda b: _talk(b).languages, ("zh",)),
    "engine": Effect("kyutai", lambda b: b.settings.engine, "kyutai"),
    "active": Effect(False, lambda b: b.deployment["spec"]["replicas"], 0),
    **_storage("redisUrlSecretRef", _partials),
    **_storage("mysqlUrlSecretRef", _segments),
}


def _talk(built: Built) -> TalkSettings:
    assert built.talk is not None
    return built.talk


def _spec_fields(kind: resources.Kind) -> list[str]:
    crd = yaml.safe_load((CRDS / f"{kind.plural}.earshot.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def leaves(node: dict[str, Any], path: str) -> list[str]:
        children = node.get("properties")
        if not children:
            return [path]
        return [
            leaf for name, child in children.items() for leaf in leaves(child, f"{path}.{name}")
        ]

    return [leaf.removeprefix(".") for leaf in leaves(spec, "")]


def _with(body: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """The body with one spec field set; a secret ref's sibling gets a value as both are needed."""
    spec = body["spec"]
    *parents, leaf = path.split(".")
    node = spec
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    if parents and parents[-1].endswith("SecretRef"):
        node.setdefault("name" if leaf == "key" else "key", "x")
    return body


CASES = [
    pytest.param(_session, SESSION_FIELDS, field, id=f"TranscriptionSession.spec.{field}")
    for field in _spec_fields(resources.SESSION)
] + [
    pytest.param(_room, ROOM_FIELDS, field, id=f"TalkRoom.spec.{field}")
    for field in _spec_fields(resources.ROOM)
]


@pytest.mark.parametrize(("make", "fields", "field"), CASES)
def test_spec_field_changes_what_the_gateway_reads(
    make: Callable[..., dict[str, Any]], fields: dict[str, Effect], field: str, clean_env: None
) -> None:
    assert field in fields, f"spec.{field} has no declared effect on the gateway"
    effect = fields[field]
    default = effect.probe(build(make()))
    changed = effect.probe(build(_with(make(), field, effect.value)))
    assert changed == effect.expected
    assert default != changed, f"spec.{field}={effect.value!r} changes nothing"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [(resources.SESSION, SESSION_FIELDS), (resources.ROOM, ROOM_FIELDS)],
    ids=["TranscriptionSession", "TalkRoom"],
)
def test_every_declared_effect_is_of_a_field_the_crd_has(
    kind: resources.Kind, fields: dict[str, Effect]
) -> None:
    assert set(fields) == set(_spec_fields(kind))
