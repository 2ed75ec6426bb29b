"""Talk as an SRE deploys it: a caption request to the chart's ExApp pod puts a room gateway pod in
the call.

Everything but Nextcloud runs for real: the chart installed with ``talk.enabled`` on the real
single-node cluster (tests/cluster/harness.py), its ExApp and operator pods, the room's gateway pod
the operator starts (recognising through the chart's Triton CPU pool, keeping finals through its
persister sidecar into the in-cluster MariaDB), and Talk's HPB: the signaling server, Janus and
NATS (tests/hpb_stack.py, in their own network namespace; Nextcloud's backend API is its double).
Two participants in the test process join the call and speak; one asks for captions.

The network: a veth pair joins the cluster's namespace to the HPB's (``netns.link``), with a route
to the HPB's address on the cluster side and one to the pod network on the HPB side, so a pod
reaches the signaling server and Janus, and Janus reaches the pod's ICE candidates. Janus sends
from its candidate's own interface whatever the routes say, so it also offers a candidate on its
end of that link (``HpbStack(ice_interfaces=...)``). A pod gets no address outside the cluster but
this route: no NAT, no DNS name for the HPB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio

from tests.cluster import hardening, netns
from tests.cluster.harness import POD_CIDR, Cluster
from tests.cluster.release import RELEASE, Release, installed_release
from tests.e2e.controlplane.cluster import ControlPlaneError
from tests.hpb_stack import HpbStack, StackUnavailable
from tests.talk_exapp import APP_SECRET, appapi_headers
from tests.talk_media import RATE, espeak
from tests.talk_participants import Participant

NAMESPACE: Final = "earshot-talk"
ROOM: Final = "clusterroom1"
TALKROOM: Final = f"talk-{ROOM}"
EXAPP: Final = f"{RELEASE}-talk"
EXAPP_PORT: Final = 23000
#: The /30 of the veth pair between the cluster's namespace and the HPB's.
LINK_SUBNET: Final = "10.98.0.0"
IN_CALL_WITH_AUDIO: Final = 1 | 2
SENTENCES: Final = {
    "en-us": "hello there, this is alice speaking about the quarterly numbers",
    "en-gb": "good morning, bob here with the weather for the week ahead",
}
CALL_TIMEOUT_S: Final = 240.0


@pytest.fixture(scope="module")
def hpb(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HpbStack]:
    """The HPB stack, linked to the cluster's namespace (pods reach it, it reaches pods)."""
    stack = HpbStack(tmp_path_factory.mktemp("hpb"), ice_interfaces=(netns.LINK_THERE,))
    try:
        stack.start()
    except StackUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)  # never skipped
    try:
        with netns.link(
            cluster.netns,
            stack.netns.name,
            routes_here=[f"{stack.netns.inner_ip}/32"],
            routes_there=[POD_CIDR],
            subnet=LINK_SUBNET,
        ):
            yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def release(cluster: Cluster, hpb: HpbStack) -> Iterator[Release]:
    """The chart with the Talk ExApp pointed at the HPB, every pod Ready; uninstalled after."""
    talk = {
        "enabled": True,
        "nextcloudUrl": hpb.nextcloud_url,
        "hpbUrl": hpb.signaling_url,
        "internalSecret": hpb.internal_secret,
        "appSecret": APP_SECRET,
        "languages": ["en"],
    }
    with installed_release(cluster, namespace=NAMESPACE, values={"talk": talk}) as installed:
        yield installed
        installed.helm("uninstall", RELEASE, "--wait")


def speech(voice: str, workdir: Path, *, repeats: int) -> npt.NDArray[np.float32]:
    """The voice's sentence ``repeats`` times, each followed by 2 s of silence (a segment ends)."""
    sentence = espeak(SENTENCES[voice], workdir, voice=voice)
    pause = np.zeros(2 * RATE, np.float32)
    return np.concatenate([part for _ in range(repeats) for part in (sentence, pause)])


def user_entry(participant: Participant) -> dict[str, Any]:
    """The participant as Nextcloud lists it in an ``incall`` update."""
    return {
        "sessionId": participant.nextcloud_session_id,
        "inCall": IN_CALL_WITH_AUDIO,
        "participantType": 3,
        "lastPing": 0,
        "userId": participant.user,
    }


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


async def until(predicate: Callable[[], Any], what: str, timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """``predicate()``'s first truthy answer (run on a thread: the call's audio plays meanwhile)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(predicate)
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last})")


@contextlib.contextmanager
def explained(release: Release, hpb: HpbStack) -> Iterator[None]:
    """A failed assertion carries the logs of the namespace's pods and of the HPB stack."""
    try:
        yield
    except AssertionError as failure:
        logs = [hpb.log_tail()]
        with contextlib.suppress(ControlPlaneError, OSError):
            for pod in release.get("pods")["items"]:
                for container in pod["spec"]["containers"]:
                    name = pod["metadata"]["name"]
                    with contextlib.suppress(ControlPlaneError):
                        tail = release.kubectl("logs", name, "-c", container["name"], "--tail=40")
                        logs.append(f"--- {name}/{container['name']}\n{tail}")
        raise AssertionError(f"{failure}\n" + "\n".join(logs)) from failure


def room_status(release: Release) -> dict[str, Any]:
    status: dict[str, Any] = release.get("talkroom", TALKROOM).get("status") or {}
    return status


def in_state(release: Release, state: str, phase: str = "") -> dict[str, Any] | None:
    """The TalkRoom's status once its room and its InCall condition (and ``phase``) say so."""
    status = room_status(release)
    reasons = {c["type"]: c.get("reason") for c in status.get("conditions") or ()}
    room_state = (status.get("room") or {}).get("state")
    same = room_state == state and reasons.get("InCall") == state
    return status if same and status.get("phase") == (phase or status.get("phase")) else None


def room_pods(release: Release) -> list[dict[str, Any]]:
    deployment = room_status(release).get("tokenSecret", "").removesuffix("-token")
    if not deployment:
        return []
    pods: list[dict[str, Any]] = release.get(
        "pods", "-l", f"app.kubernetes.io/instance={deployment}"
    )["items"]
    return pods


def stored_finals(release: Release) -> set[tuple[str, str]]:
    """(speaker, text) of every final of the room's calls in the in-cluster MariaDB."""
    rows = release.mysql(
        f"SELECT speaker, content FROM segments WHERE session_id LIKE 'talk:{ROOM}:%'"
    )
    return {(speaker, content) for speaker, content in rows}


async def test_a_caption_request_to_the_exapp_pod_puts_the_rooms_gateway_pod_in_the_call(
    release: Release,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    tmp_path: Path,
) -> None:
    with explained(release, hpb):
        await _caption_call(release, hpb, participants, tmp_path)


async def _caption_call(
    release: Release,
    hpb: HpbStack,
    participants: tuple[Participant, Participant],
    tmp_path: Path,
) -> None:
    alice, bob = participants
    for participant in (alice, bob):
        await participant.connect(ROOM)
    everyone = [user_entry(alice), user_entry(bob)]
    await asyncio.to_thread(hpb.post_in_call, ROOM, everyone, everyone)
    await alice.publish(speech("en-us", tmp_path, repeats=40))
    await bob.publish(speech("en-gb", tmp_path, repeats=40))

    service = await asyncio.to_thread(release.get, "service", EXAPP)
    with netns.PortForward(release.cluster.netns, service["spec"]["clusterIP"], EXAPP_PORT) as fwd:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{fwd.port}", headers=appapi_headers(), timeout=60
        ) as exapp:
            # What Talk sends when alice turns captions on
            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": True, "langId": "en"}
            response = await exapp.post("/api/v1/call/transcribe", json=body)
            assert (response.status_code, response.json()) == (
                200,
                {"message": "transcription enabled"},
            )
            # The ExApp wrote the TalkRoom; the operator's gateway pod joined the call, and its
            # kubelet found it Ready (its readiness probe answers 200 only once joined).
            in_call = await until(
                lambda: in_state(release, "InCall", "Ready"), "the TalkRoom to be InCall, Ready"
            )
            assert in_call["room"]["speakers"] == 2
            assert in_call["room"]["targets"] == 1
            [pod] = await asyncio.to_thread(room_pods, release)
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True", pod["status"]
            assert pod["spec"]["nodeName"] == "earshot-node"
            assert [c["name"] for c in pod["spec"]["containers"]] == ["gateway", "persister"]
            # the room's gateway pod and the ExApp pod: non-root, read-only root, no restart
            exapp_pod = await asyncio.to_thread(release.get, "pod", release.pod_of("talk"))
            for checked in (pod, exapp_pod):
                await asyncio.to_thread(hardening.assert_hardened, release, checked)

            names = {alice.session_id: "alice", bob.session_id: "bob"}

            def finals_from_both() -> bool:
                speakers = {t["speakerSessionId"] for t in alice.transcripts() if t["final"]}
                return speakers == set(names)

            await until(finals_from_both, "finals of both speakers at alice")
            assert bob.transcripts() == []  # captions reach only the participant who asked
            told = {
                (names[t["speakerSessionId"]], t["message"])
                for t in alice.transcripts()
                if t["final"]
            }
            # Every final alice was told is a row in the in-cluster MariaDB, with its speaker,
            # stored by the room pod's persister sidecar.
            await until(lambda: told <= stored_finals(release), "the finals to be stored", 60)
            assert {speaker for speaker, _ in await asyncio.to_thread(stored_finals, release)} == {
                "alice",
                "bob",
            }

            shown = (await exapp.get("/api/v1/status")).json()
            assert shown["cluster"] is True
            [room] = shown["rooms"]
            assert (room["roomToken"], room["state"], room["speakers"]) == (ROOM, "InCall", 2)

            # alice turns captions off: the gateway leaves the call and the TalkRoom completes
            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": False}
            response = await exapp.post("/api/v1/call/transcribe", json=body)
            assert (response.status_code, response.json()) == (
                200,
                {"message": "transcription disabled"},
            )
    [bot] = alice.transcript_senders()

    await until(lambda: bob.saw_leave(bot), "the room to see the gateway leave", 60)
    left = await until(lambda: in_state(release, "Left"), "the TalkRoom to say Left")
    assert "inactive" in left["room"]["message"], json.dumps(left)
    await until(
        lambda: room_status(release).get("phase") == "Completed", "the TalkRoom to complete"
    )
