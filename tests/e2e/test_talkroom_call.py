"""Acceptance: a Talk request in a cluster makes the room's gateway join its call by itself.

Everything is real except Nextcloud (the HPB stack's backend double) and the kubelet: the API
server and the operator (with its least-privilege role), the ExApp in cluster mode as a process
with the chart's ExApp role, the signaling server with Janus and NATS, and the room's gateway
started with exactly the environment of the Deployment the operator made (ConfigMap, Secrets, its
own service account's token). Two participants speak; one asks for captions. Only that one gets
captions, from both speakers; a language change (to another language the engine recognises) changes
the captions' langId; opting out makes the gateway leave the call, and the TalkRoom says so.

Where the kubelet's world differs it is replaced and said so: the API server's address (a pod
reaches it as kubernetes.default.svc), the gateway's port (a pod has its own network namespace: a
free port here), the Triton URL (no Triton pool here: the in-process engine recognises) and the
spool folder (a pod's own volume: the test's folder here).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio

from earshot.engines import loading
from earshot.events import Segment
from earshot.persistence import spool
from earshot.persistence.reading import StreamReader
from earshot.settings import Settings
from earshot_operator.clients import ApiError, KubeClient, path_of
from tests.e2e.controlplane.cluster import REPO, ControlPlane
from tests.e2e.controlplane.operators import OperatorProcess
from tests.e2e.helpers import eventually, make_pods_ready
from tests.e2e.kubelets import (
    ContainerProcess,
    container_of,
    mark_pods_unready,
    mount_token,
    role_rules,
)
from tests.hpb_stack import HpbStack, StackUnavailable
from tests.servers import free_port
from tests.talk_exapp import APP_SECRET, appapi_headers
from tests.talk_media import RATE, espeak
from tests.talk_participants import Participant

ROOM = "e2eroom7"
TALKROOM = "talk-e2eroom7"
IN_CALL = 1
IN_CALL_WITH_AUDIO = IN_CALL | 2
TARGETS = "earshot.dev/caption-targets"
MERGE = {"Content-Type": "application/merge-patch+json"}
EXAPP_ROLE = REPO / "charts/earshot/templates/talk/exapp.yaml"
#: How long a request must stay unanswered while nothing can accept its TalkRoom.
UNANSWERED_S = 3.0
SENTENCES = {
    "en-us": "hello there, this is alice speaking about the quarterly numbers",
    "en-gb": "good morning, bob here with the weather for the week ahead",
}


@pytest.fixture(scope="module")
def hpb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HpbStack]:
    """A fresh HPB stack (signaling server 1.2.4, Janus, NATS) for this module."""
    stack = HpbStack(tmp_path_factory.mktemp("hpb"))
    try:
        stack.start()
    except StackUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)  # never skipped
    yield stack
    stack.close()


@pytest_asyncio.fixture
async def model_cache(tiny_model_cache: Path) -> Path:
    """The tiny model built once here, so the two processes find it ready."""
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    await engine.aclose()
    return tiny_model_cache


def speech(voice: str, workdir: Path, *, repeats: int) -> npt.NDArray[np.float32]:
    """espeak-ng speech at 48 kHz: the sentence ``repeats`` times, each followed by 2 s of silence."""
    sentence = espeak(SENTENCES[voice], workdir, voice=voice)
    pause = np.zeros(2 * RATE, np.float32)
    return np.concatenate([part for _ in range(repeats) for part in (sentence, pause)])


def user_entry(participant: Participant) -> dict[str, Any]:
    return {
        "sessionId": participant.nextcloud_session_id,
        "inCall": IN_CALL_WITH_AUDIO,
        "participantType": 3,
        "lastPing": 0,
        "userId": participant.user,
    }


async def create(api: KubeClient, body: dict[str, Any]) -> None:
    await api.create(body)


async def arrange_exapp_account(api: KubeClient, namespace: str) -> None:
    """The ExApp's ServiceAccount bound to the chart's ExApp Role rules."""
    meta = {"name": "earshot-talk", "namespace": namespace}
    rbac = "rbac.authorization.k8s.io"
    await create(api, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    await api.request(
        "POST",
        f"/apis/{rbac}/v1/namespaces/{namespace}/roles",
        body={"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta,
              "rules": role_rules(EXAPP_ROLE)},
    )  # fmt: skip
    await api.request(
        "POST",
        f"/apis/{rbac}/v1/namespaces/{namespace}/rolebindings",
        body={
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "earshot-talk"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "earshot-talk", "namespace": namespace}
            ],
        },
    )


def secret(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": encoded,
    }


async def talkroom(api: KubeClient, namespace: str, name: str = TALKROOM) -> dict[str, Any]:
    found = await api.get(
        path_of("earshot.dev/v1alpha1", "TalkRoom", namespace=namespace, name=name)
    )
    assert found is not None
    return found


async def room_is(
    api: KubeClient, namespace: str, state: str, *, name: str = TALKROOM
) -> dict[str, Any] | None:
    """The status once both ``status.room`` and the InCall condition show ``state``.

    The operator rewrites the conditions from what it read; a condition it wrote back stale is
    restored by the gateway within its status interval, so both are awaited together.
    """
    body = await talkroom(api, namespace, name)
    status = body.get("status") or {}
    reasons = {c["type"]: c.get("reason") for c in status.get("conditions") or ()}
    same = (status.get("room") or {}).get("state") == state and reasons.get("InCall") == state
    return status if same else None


async def arrange_room_secrets(api: KubeClient, namespace: str, *, internal_secret: str) -> None:
    """The HPB's internal secret, and the operator's default storage Secret (read, not used)."""
    await create(api, secret(namespace, "hpb", {"internal-secret": internal_secret}))
    await create(
        api,
        secret(
            namespace,
            "earshot-storage",
            {"redis-url": "redis://127.0.0.1:1/0", "mysql-url": "sqlite+aiosqlite:///:memory:"},
        ),
    )


def room_body(namespace: str, hpb: HpbStack, *, targets: str, token: str = ROOM) -> dict[str, Any]:
    """A TalkRoom as the ExApp writes it (docs/samples/talkroom.yaml)."""
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {
            "name": f"talk-{token}",
            "namespace": namespace,
            "annotations": {TARGETS: targets},
        },
        "spec": {
            "roomToken": token,
            "hpbUrl": hpb.signaling_url,
            "nextcloudUrl": hpb.nextcloud_url,
            "internalSecretRef": {"name": "hpb"},
            "languages": ["en"],
            "engine": "paraformer",
        },
    }


class RoomGateway(ContainerProcess):
    """The gateway container of a room's Deployment, run here."""

    deployment = ""


async def start_room_gateway(
    api: KubeClient,
    namespace: str,
    control_plane: ControlPlane,
    *,
    model_cache: Path,
    folder: Path,
    name: str = TALKROOM,
) -> tuple[RoomGateway, str]:
    """Start the gateway container of the TalkRoom's Deployment; returns it and its probe URL."""
    body = await eventually(
        lambda: _with_token_secret(api, namespace, name), what="the operator to take the TalkRoom"
    )
    deployment = body["status"]["tokenSecret"].removesuffix("-token")
    await eventually(
        lambda: api.get(path_of("apps/v1", "Deployment", namespace=namespace, name=deployment)),
        what="the room's Deployment",
    )
    pod = await container_of(api, namespace, deployment, name="gateway")
    assert pod.command == ["earshot", "talk"]
    assert pod.env["EARSHOT_TALK_ROOM_TOKEN"] == body["spec"]["roomToken"]
    assert pod.env["EARSHOT_TALK_TALKROOM_NAME"] == name
    assert pod.service_account is not None
    assert pod.service_account == deployment
    account = await mount_token(
        api, namespace, pod.service_account, ca=control_plane.ca, folder=folder / "sa"
    )
    port = free_port()
    env = {
        **pod.env,
        "EARSHOT_TALK_KUBE_API_URL": control_plane.server,
        "EARSHOT_TALK_SERVICE_ACCOUNT_DIR": str(account),
        "EARSHOT_TALK_APP_PORT": str(port),
        "EARSHOT_TRITON_URL": "",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(model_cache),
        # a pod's spool is its own emptyDir volume; here: the test's folder, not the host's
        "EARSHOT_SPOOL_DIR": str(folder / "spool"),
    }
    gateway = RoomGateway(pod.command, env, log=folder / "gateway.log")
    gateway.deployment = deployment
    gateway.start()
    return gateway, f"http://127.0.0.1:{port}{pod.readiness_path}"


async def _created(api: KubeClient, namespace: str) -> dict[str, Any] | None:
    path = path_of("earshot.dev/v1alpha1", "TalkRoom", namespace=namespace, name=TALKROOM)
    return await api.get(path)


async def _with_token_secret(api: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    body = await talkroom(api, namespace, name)
    return body if (body.get("status") or {}).get("tokenSecret") else None


async def event_posted(
    api: KubeClient, namespace: str, kind: str, reason: str, *, name: str = TALKROOM
) -> None:
    """Wait for an event: the operator posts a reconcile's events after its status patch."""

    async def posted() -> bool:
        return (kind, reason) in await events_of(api, namespace, name=name)

    await eventually(posted, timeout_s=15, what=f"the {kind} {reason} event")


async def events_of(
    api: KubeClient, namespace: str, *, name: str = TALKROOM
) -> list[tuple[str, str]]:
    answer = await api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    return [(e["type"], e["reason"]) for e in answer["items"]]


@pytest_asyncio.fixture(autouse=True)
async def talkrooms_deleted_first(api: KubeClient, namespace: str) -> AsyncIterator[None]:
    """Delete the TalkRooms before their namespace, so the operator's drift timer does not try to
    recreate their objects in a namespace being terminated (the API server forbids that)."""
    yield
    collection = f"/apis/earshot.dev/v1alpha1/namespaces/{namespace}/talkrooms"
    for item in (await api.request("GET", collection))["items"]:
        await api.delete(f"{collection}/{item['metadata']['name']}")

    async def none_left() -> bool:
        return not (await api.request("GET", collection))["items"]

    await eventually(none_left, what="the TalkRooms to be deleted")


@pytest_asyncio.fixture
async def participants(hpb: HpbStack) -> AsyncIterator[tuple[Participant, Participant]]:
    alice = Participant(
        hpb.signaling_url, hpb.backend_url, user="alice", nextcloud_session_id="nc-alice"
    )
    bob = Participant(hpb.signaling_url, hpb.backend_url, user="bob", nextcloud_session_id="nc-bob")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def test_a_talk_request_makes_the_room_gateway_join_and_captions_follow_its_talkroom(
    control_plane: ControlPlane,
    operator_process: OperatorProcess,
    api: KubeClient,
    namespace: str,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    model_cache: Path,
    tmp_path: Path,
) -> None:
    alice, bob = participants
    await arrange_room_secrets(api, namespace, internal_secret=hpb.internal_secret)
    await arrange_exapp_account(api, namespace)
    exapp_port = free_port()
    exapp_env = {
        "APP_SECRET": APP_SECRET,
        "APP_PORT": str(exapp_port),
        "APP_HOST": "127.0.0.1",
        "NEXTCLOUD_URL": hpb.nextcloud_url,
        "LT_HPB_URL": hpb.signaling_url,
        "EARSHOT_TALK_LANGUAGES": "en,zh",
        "EARSHOT_TALK_ENGINE": "paraformer",
        "EARSHOT_TALK_IN_CLUSTER": "true",
        "EARSHOT_TALK_NAMESPACE": namespace,
        # longer than the test holds the operator frozen (UNANSWERED_S) and lets it catch up
        "EARSHOT_TALK_ACCEPT_TIMEOUT_SECONDS": "60",
        "EARSHOT_TALK_INTERNAL_SECRET_REF": "hpb",
        "EARSHOT_CACHE_DIR": str(model_cache),
        # what the kubelet and the cluster give a pod
        "EARSHOT_TALK_KUBE_API_URL": control_plane.server,
        "EARSHOT_TALK_SERVICE_ACCOUNT_DIR": str(
            await mount_token(
                api, namespace, "earshot-talk", ca=control_plane.ca, folder=tmp_path / "exapp-sa"
            )
        ),
    }

    for participant in (alice, bob):
        await participant.connect(ROOM)
    everyone = [user_entry(alice), user_entry(bob)]
    await asyncio.to_thread(hpb.post_in_call, ROOM, everyone, everyone)
    # long enough for every step below (the call's audio ends with the test)
    await alice.publish(speech("en-us", tmp_path, repeats=30))
    await bob.publish(speech("en-gb", tmp_path, repeats=30))

    exapp = ContainerProcess(["earshot", "talk"], exapp_env, log=tmp_path / "exapp.log")
    with contextlib.ExitStack() as processes:
        processes.enter_context(exapp)
        url = f"http://127.0.0.1:{exapp_port}"
        await eventually(
            lambda: _answers(exapp, f"{url}/heartbeat"), timeout_s=120, what="the ExApp"
        )
        async with httpx.AsyncClient(base_url=url, headers=appapi_headers(), timeout=60) as http:
            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": True, "langId": "en"}
            # The gate held shut: the operator is frozen, so nothing can accept the TalkRoom.
            with operator_process.paused():
                asking = asyncio.create_task(http.post("/api/v1/call/transcribe", json=body))
                waiting = await eventually(
                    lambda: _created(api, namespace), what="the ExApp to write the TalkRoom"
                )
                assert "observedGeneration" not in (waiting.get("status") or {})
                done, _ = await asyncio.wait({asking}, timeout=UNANSWERED_S)
                assert not done, (
                    f"Talk was answered before the TalkRoom was accepted: {exapp.tail()}"
                )
            # The gate opened: the operator accepts the TalkRoom, and only then Talk hears 200.
            response = await asking
            assert (response.status_code, response.json()) == (
                200,
                {"message": "transcription enabled"},
            ), exapp.tail()
            accepted = await talkroom(api, namespace)
            assert accepted["status"]["observedGeneration"] >= accepted["metadata"]["generation"]

            # Play the kubelet: start the gateway container of the Deployment the operator made.
            gateway, ready_url = await start_room_gateway(
                api, namespace, control_plane, model_cache=model_cache, folder=tmp_path
            )
            processes.callback(gateway.stop)
            deployment = gateway.deployment
            await eventually(
                lambda: _ready(gateway, ready_url), timeout_s=120, what="the gateway to join"
            )
            # the probe succeeded: the kubelet marks the pod Ready
            await eventually(
                lambda: make_pods_ready(api, namespace, deployment), what="the gateway's pod"
            )
            # Nextcloud repeats the call's participants whenever the call changes.
            await asyncio.to_thread(hpb.post_in_call, ROOM, everyone, everyone)

            def finals_of_both(participant: Participant, lang: str) -> bool:
                speakers = {t["speakerSessionId"] for t in finals(participant, lang)}
                return speakers == {alice.session_id, bob.session_id}

            def finals_from_both(lang: str) -> bool:
                return finals_of_both(alice, lang)

            await _until(lambda: finals_from_both("en"), 90, "English finals of both", gateway)
            assert bob.transcripts() == []
            in_call = await eventually(
                lambda: room_is(api, namespace, "InCall"), what="the TalkRoom to say InCall"
            )
            assert in_call["room"]["speakers"] == 2
            assert in_call["room"]["targets"] == 1
            assert in_call["phase"] == "Ready"
            condition = next(c for c in in_call["conditions"] if c["type"] == "InCall")
            assert condition["status"] == "True"
            await event_posted(api, namespace, "Normal", "InCall")
            shown = (await http.get("/api/v1/status")).json()
            [room] = shown["rooms"]
            assert (room["roomToken"], room["state"], room["speakers"]) == (ROOM, "InCall", 2)

            # paraformer recognises zh and en by itself: switching labels its captions zh
            switched = await http.post(
                "/api/v1/call/set-language", json={"roomToken": ROOM, "langId": "zh"}
            )
            assert switched.status_code == 200
            await _until(lambda: finals_from_both("zh"), 90, "finals of both in zh", gateway)
            assert bob.transcripts() == []
            # a language the engine cannot recognise is refused, not written into the TalkRoom
            refused = await http.post(
                "/api/v1/call/set-language", json={"roomToken": ROOM, "langId": "fr"}
            )
            assert (refused.status_code, refused.json()) == (
                400,
                {"error": "language 'fr' is not offered"},
            )
            assert (await talkroom(api, namespace))["spec"]["languages"][0] == "zh"

            # bob asks for captions in the running call (Talk sends no langId): the gateway in the
            # call adds him, and the room keeps the language it was switched to
            body = {"roomToken": ROOM, "ncSessionId": "nc-bob", "enable": True}
            assert (await http.post("/api/v1/call/transcribe", json=body)).status_code == 200
            assert (await talkroom(api, namespace))["spec"]["languages"][0] == "zh"
            await _until(
                lambda: finals_of_both(bob, "zh"), 90, "bob's finals of both in zh", gateway
            )
            assert {t["langId"] for t in bob.transcripts()} == {"zh"}
            both = await eventually(
                lambda: _targets(api, namespace, 2), what="the TalkRoom to count two targets"
            )
            assert both["message"].endswith("captions in zh for 2 participants"), both

            # bob opts out again: his captions stop, alice's go on
            body = {"roomToken": ROOM, "ncSessionId": "nc-bob", "enable": False}
            assert (await http.post("/api/v1/call/transcribe", json=body)).status_code == 200
            await eventually(
                lambda: _targets(api, namespace, 1), what="the TalkRoom to count one target"
            )
            # a final alice is told after the gateway dropped bob marks what bob was told before
            marked = len(finals(alice))
            await _until(lambda: len(finals(alice)) > marked, 60, "a final at alice", gateway)
            told_bob = len(bob.transcripts())
            after = len(finals(alice))
            await _until(
                lambda: (
                    {t["speakerSessionId"] for t in finals(alice)[after:]}
                    == {alice.session_id, bob.session_id}
                ),
                90,
                "alice's finals of both after bob opted out",
                gateway,
            )
            assert len(bob.transcripts()) == told_bob

            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": False}
            assert (await http.post("/api/v1/call/transcribe", json=body)).status_code == 200
            [bot] = alice.transcript_senders()

            await _until(
                lambda: bob.saw_leave(bot), 30, "the room to see the gateway leave", gateway
            )
            left = await eventually(
                lambda: room_is(api, namespace, "Left"), what="the TalkRoom to say Left"
            )
            assert "inactive" in left["room"]["message"]
            condition = next(c for c in left["conditions"] if c["type"] == "InCall")
            assert (condition["status"], condition["reason"]) == ("False", "Left")
            await eventually(
                lambda: _phase(api, namespace, "Completed"), what="the TalkRoom to complete"
            )
            await event_posted(api, namespace, "Normal", "Left")
            status, _ = gateway.probe(ready_url)
            assert status == 503
            # The call's finals were kept in the gateway's spool, for its persister sidecar.
            kept = await asyncio.to_thread(spooled_finals, tmp_path / "spool")
            assert {s.session_id.rsplit(":", 1)[0] for s in kept} == {f"talk:{ROOM}"}
            assert {s.speaker for s in kept} == {"alice", "bob"}


def finals(participant: Participant, lang: str | None = None) -> list[dict[str, Any]]:
    """The finals ``participant`` was told (in ``lang`` only, when given), in order."""
    return [
        t for t in participant.transcripts() if t["final"] and (lang is None or t["langId"] == lang)
    ]


async def _targets(api: KubeClient, namespace: str, count: int) -> dict[str, Any] | None:
    """``status.room`` once the gateway reports ``count`` caption targets in the call."""
    room = ((await talkroom(api, namespace)).get("status") or {}).get("room") or {}
    in_call = room.get("state") in ("InCall", "Idle")
    return room if in_call and room.get("targets") == count else None


def spooled_finals(spool_dir: Path) -> list[Segment]:
    """Every final in the spool's streams (what the persister sidecar would store)."""
    entries = [e for stream in spool.streams(spool_dir) for e in StreamReader(stream).read(10_000)]
    return [e.record for e in entries if isinstance(e.record, Segment)]


def test_the_sample_talkroom_is_valid(control_plane: ControlPlane, namespace: str) -> None:
    sample = REPO / "docs/samples/talkroom.yaml"
    applied = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))
    assert "talkroom.earshot.dev/standup created (server dry run)" in applied


def _room_of(namespace: str, hpb: HpbStack, engine: str | None, languages: list[str]) -> Any:
    body = room_body(namespace, hpb, targets="")
    body["spec"]["languages"] = languages
    if engine is None:
        del body["spec"]["engine"]  # the default engine: paraformer
    else:
        body["spec"]["engine"] = engine
    return body


@pytest.mark.parametrize(
    ("engine", "languages"),
    [("paraformer", ["en", "zh"]), ("kyutai", ["fr", "en"]), (None, ["zh"])],
)
async def test_the_api_server_admits_languages_the_rooms_engine_recognises(
    api: KubeClient, namespace: str, hpb: HpbStack, engine: str | None, languages: list[str]
) -> None:
    collection = f"/apis/earshot.dev/v1alpha1/namespaces/{namespace}/talkrooms"
    body = _room_of(namespace, hpb, engine, languages)
    admitted = await api.request("POST", collection, body=body, params={"dryRun": "All"})
    assert admitted["spec"]["languages"] == languages


@pytest.mark.parametrize(
    ("engine", "languages"),
    [("paraformer", ["en", "fr"]), ("kyutai", ["en", "zh"]), (None, ["fr"])],
)
async def test_the_api_server_refuses_languages_the_rooms_engine_cannot_recognise(
    api: KubeClient, namespace: str, hpb: HpbStack, engine: str | None, languages: list[str]
) -> None:
    collection = f"/apis/earshot.dev/v1alpha1/namespaces/{namespace}/talkrooms"
    body = _room_of(namespace, hpb, engine, languages)
    with pytest.raises(ApiError) as refused:
        await api.request("POST", collection, body=body, params={"dryRun": "All"})
    assert refused.value.status == 422
    # the API server names one field of the failing pair (no CEL on 1.20 for a better message)
    message = refused.value.message
    assert "must validate at least one schema (anyOf)" in message
    assert (
        "spec.engine: Unsupported value" in message
        or "spec.languages: Unsupported value" in message
    ), message


async def test_a_room_gateway_the_hpb_refuses_reports_the_signaling_error(
    control_plane: ControlPlane,
    api: KubeClient,
    namespace: str,
    hpb: HpbStack,
    model_cache: Path,
    tmp_path: Path,
) -> None:
    await arrange_room_secrets(api, namespace, internal_secret="not-the-hpb-secret")
    await create(api, room_body(namespace, hpb, targets="nc-alice"))
    gateway, ready_url = await start_room_gateway(
        api, namespace, control_plane, model_cache=model_cache, folder=tmp_path
    )
    with gateway:
        failed = await eventually(
            lambda: room_is(api, namespace, "Failed"), what="the TalkRoom to say Failed"
        )
        assert failed["room"]["message"].startswith(f"cannot join room {ROOM}: ")
        assert "retrying in" in failed["room"]["message"]
        condition = next(c for c in failed["conditions"] if c["type"] == "InCall")
        assert (condition["status"], condition["reason"]) == ("False", "Failed")
        await event_posted(api, namespace, "Warning", "Failed")
        status, body = gateway.probe(ready_url)
        assert (status, json.loads(body)["state"]) == (503, "Failed")
        assert gateway.running, gateway.tail()

    # The gateway's own account reads its TalkRoom and nothing else.
    token = (tmp_path / "sa" / "token").read_text()
    async with httpx.AsyncClient(
        base_url=control_plane.server,
        verify=ssl.create_default_context(cafile=str(control_plane.ca)),
        headers={"Authorization": f"Bearer {token}"},
    ) as own:
        talkrooms = f"/apis/earshot.dev/v1alpha1/namespaces/{namespace}/talkrooms"
        answers = [
            (await own.get(f"{talkrooms}/{TALKROOM}")).status_code,
            (await own.get(talkrooms)).status_code,
            (await own.get(f"{talkrooms}/another-room")).status_code,
            (await own.get(f"/api/v1/namespaces/{namespace}/secrets")).status_code,
            (await own.patch(f"{talkrooms}/{TALKROOM}", json={}, headers=MERGE)).status_code,
        ]
    assert answers == [200, 403, 403, 403, 403]


async def test_a_room_gateway_leaves_an_ended_call_and_joins_again_only_for_a_new_request(
    control_plane: ControlPlane,
    api: KubeClient,
    namespace: str,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    model_cache: Path,
    tmp_path: Path,
) -> None:
    alice, bob = participants
    room = f"{ROOM}b"
    for participant in (alice, bob):
        await participant.connect(room)
    everyone = [user_entry(alice), user_entry(bob)]
    await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)
    await arrange_room_secrets(api, namespace, internal_secret=hpb.internal_secret)
    await create(api, room_body(namespace, hpb, targets="nc-alice", token=room))
    gateway, ready_url = await start_room_gateway(
        api, namespace, control_plane, model_cache=model_cache, folder=tmp_path, name=f"talk-{room}"
    )
    with gateway:
        await eventually(
            lambda: _ready(gateway, ready_url), timeout_s=120, what="the gateway to join"
        )
        await eventually(
            lambda: make_pods_ready(api, namespace, gateway.deployment), what="the gateway's pod"
        )
        await eventually(
            lambda: _phase(api, namespace, "Ready", name=f"talk-{room}"), what="the room Ready"
        )
        await asyncio.to_thread(hpb.post_call_ended, room)
        left = await eventually(
            lambda: room_is(api, namespace, "Left", name=f"talk-{room}"),
            what="the TalkRoom to say Left",
        )
        assert left["room"]["message"] == "left the call: the call ended"
        # Still listed, alice does not make it join the ended call again.
        await asyncio.sleep(3)
        assert await room_is(api, namespace, "Left", name=f"talk-{room}") is not None
        status, _ = gateway.probe(ready_url)
        assert status == 503
        # the probe failed: the kubelet marks the pod unready, and the operator says why
        assert await mark_pods_unready(api, namespace, gateway.deployment) == 1
        provisioning = await eventually(
            lambda: _phase(api, namespace, "Provisioning", name=f"talk-{room}"),
            what="the room's phase to leave Ready",
        )
        assert provisioning["message"] == (
            "the gateway is not in its call: left the call: the call ended"
        )
        ready = next(c for c in provisioning["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NotInCall")

        # A new call: bob asks for captions, and the gateway joins again.
        await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)
        path = path_of("earshot.dev/v1alpha1", "TalkRoom", namespace=namespace, name=f"talk-{room}")
        await api.patch(path, {"metadata": {"annotations": {TARGETS: "nc-alice,nc-bob"}}})
        await eventually(
            lambda: _ready(gateway, ready_url), timeout_s=60, what="the gateway to join again"
        )


async def test_a_room_gateway_leaves_when_its_caption_targets_empty_while_the_room_stays_active(
    control_plane: ControlPlane,
    api: KubeClient,
    namespace: str,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    model_cache: Path,
    tmp_path: Path,
) -> None:
    # What docs/samples/talkroom.yaml and the chart's NOTES tell kubectl users: the gateway
    # leaves when the caption-targets list empties, even with active still true.
    alice, bob = participants
    room = f"{ROOM}d"
    name = f"talk-{room}"
    for participant in (alice, bob):
        await participant.connect(room)
    everyone = [user_entry(alice), user_entry(bob)]
    await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)
    await alice.publish(speech("en-us", tmp_path, repeats=10))
    await arrange_room_secrets(api, namespace, internal_secret=hpb.internal_secret)
    await create(api, room_body(namespace, hpb, targets="nc-alice", token=room))
    gateway, ready_url = await start_room_gateway(
        api, namespace, control_plane, model_cache=model_cache, folder=tmp_path, name=name
    )
    with gateway:
        await eventually(
            lambda: _ready(gateway, ready_url), timeout_s=120, what="the gateway to join"
        )
        await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)
        await _until(lambda: bool(finals(alice)), 90, "a final at alice", gateway)
        [bot] = alice.transcript_senders()

        path = path_of("earshot.dev/v1alpha1", "TalkRoom", namespace=namespace, name=name)
        await api.patch(path, {"metadata": {"annotations": {TARGETS: ""}}})
        # the room's grace period (EARSHOT_TALK_GRACE_SECONDS, 10 s) passes first
        left = await eventually(
            lambda: room_is(api, namespace, "Left", name=name),
            timeout_s=60,
            what="the TalkRoom to say Left",
        )
        assert left["room"]["message"] == "left the call: nobody wants captions"
        assert (await talkroom(api, namespace, name))["spec"]["active"] is True
        await event_posted(api, namespace, "Normal", "Left", name=name)

        await _until(lambda: bob.saw_leave(bot), 30, "the room to see the gateway leave", gateway)
        status, _ = gateway.probe(ready_url)
        assert status == 503


async def test_a_room_gateway_in_a_call_where_nobody_speaks_is_idle_until_somebody_does(
    control_plane: ControlPlane,
    api: KubeClient,
    namespace: str,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    model_cache: Path,
    tmp_path: Path,
) -> None:
    alice, _ = participants
    room = f"{ROOM}c"
    name = f"talk-{room}"
    await alice.connect(room)
    # alice is in the call without audio: she only wants to read captions
    listening = {**user_entry(alice), "inCall": IN_CALL}
    await asyncio.to_thread(hpb.post_in_call, room, [listening], [listening])
    await arrange_room_secrets(api, namespace, internal_secret=hpb.internal_secret)
    await create(api, room_body(namespace, hpb, targets="nc-alice", token=room))
    gateway, ready_url = await start_room_gateway(
        api, namespace, control_plane, model_cache=model_cache, folder=tmp_path, name=name
    )
    with gateway:
        await eventually(
            lambda: _ready(gateway, ready_url), timeout_s=120, what="the gateway to join"
        )
        idle = await eventually(
            lambda: room_is(api, namespace, "Idle", name=name), what="the TalkRoom to say Idle"
        )
        assert idle["room"]["speakers"] == 0
        assert idle["room"]["message"].startswith("in the call with nobody speaking yet"), idle
        condition = next(c for c in idle["conditions"] if c["type"] == "InCall")
        assert (condition["status"], condition["reason"]) == ("True", "Idle")
        await event_posted(api, namespace, "Normal", "Idle", name=name)
        # Idle is in the call: the probe answers, the pod is Ready, and so is the TalkRoom
        status, body = gateway.probe(ready_url)
        assert (status, json.loads(body)["state"]) == (200, "Idle")
        await eventually(
            lambda: make_pods_ready(api, namespace, gateway.deployment), what="the gateway's pod"
        )
        await eventually(lambda: _phase(api, namespace, "Ready", name=name), what="the room Ready")

        # alice turns her microphone on: one speaker, and the TalkRoom says InCall
        await alice.publish(speech("en-us", tmp_path, repeats=2))
        speaking = user_entry(alice)
        await asyncio.to_thread(hpb.post_in_call, room, [speaking], [speaking])
        in_call = await eventually(
            lambda: room_is(api, namespace, "InCall", name=name), what="the TalkRoom to say InCall"
        )
        assert in_call["room"]["speakers"] == 1
        await event_posted(api, namespace, "Normal", "InCall", name=name)


async def _answers(process: ContainerProcess, url: str) -> bool:
    assert process.running, process.tail()
    status, _ = await asyncio.to_thread(process.probe, url)
    return status == 200


async def _ready(process: ContainerProcess, url: str) -> bool:
    assert process.running, process.tail()
    status, body = await asyncio.to_thread(process.probe, url)
    if status == 503:
        assert json.loads(body)["state"] in ("Joining", "Left"), (body, process.tail())
    return status == 200


async def _phase(
    api: KubeClient, namespace: str, phase: str, *, name: str = TALKROOM
) -> dict[str, Any] | None:
    status = (await talkroom(api, namespace, name)).get("status") or {}
    return status if status.get("phase") == phase else None


async def _until(predicate: Any, within: float, what: str, gateway: ContainerProcess) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}; gateway log:\n{gateway.tail()}")
        await asyncio.sleep(0.1)
