"""TalkRoom requests through the Kubernetes API client, against an in-memory API server fake."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from earshot.gateways.talk import talkrooms

NAMESPACE = "talk"
COLLECTION = f"/apis/earshot.dev/v1alpha1/namespaces/{NAMESPACE}/talkrooms"


@dataclass
class FakeApiServer:
    """Create, get and merge-patch of namespaced custom objects, like the apiserver answers them."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    forbid: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.forbid:
            return httpx.Response(403, json={"kind": "Status", "reason": "Forbidden"})
        path = request.url.path
        if request.method == "POST" and path == COLLECTION:
            body = json.loads(request.content)
            name = body["metadata"]["name"]
            if name in self.objects:
                return httpx.Response(409, json={"reason": "AlreadyExists"})
            self.objects[name] = body
            return httpx.Response(201, json=body)
        name = path.removeprefix(COLLECTION + "/")
        if name not in self.objects:
            return httpx.Response(404, json={"reason": "NotFound"})
        if request.method == "GET":
            return httpx.Response(200, json=self.objects[name])
        if request.method == "PATCH":
            assert request.headers["Content-Type"] == "application/merge-patch+json"
            self.objects[name] = _merge(self.objects[name], json.loads(request.content))
            return httpx.Response(200, json=self.objects[name])
        return httpx.Response(405)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(target)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


SPEC = talkrooms.TalkRoomSpec(
    room_token="AbC123",
    hpb_url="wss://hpb.example.com/standalone-signaling",
    nextcloud_url="https://cloud.example.com",
    internal_secret_name="hpb-internal",
    languages=("en", "fr"),
    engine="kyutai",
)


def client_for(api: FakeApiServer) -> talkrooms.KubernetesTalkRooms:
    http = httpx.AsyncClient(
        base_url="https://apiserver", transport=httpx.MockTransport(api.handle)
    )
    return talkrooms.KubernetesTalkRooms(http, namespace=NAMESPACE)


async def test_a_first_request_creates_the_talkroom_with_the_crd_fields() -> None:
    api = FakeApiServer()
    client = client_for(api)
    await client.request(SPEC, session="nc-a", enable=True)
    await client.aclose()
    room = api.objects["talk-abc123"]
    assert room["apiVersion"] == "earshot.dev/v1alpha1"
    assert room["kind"] == "TalkRoom"
    assert room["spec"] == {
        "roomToken": "AbC123",
        "hpbUrl": "wss://hpb.example.com/standalone-signaling",
        "nextcloudUrl": "https://cloud.example.com",
        "internalSecretRef": {"name": "hpb-internal"},
        "languages": ["en", "fr"],
        "engine": "kyutai",
        "active": True,
    }
    assert room["metadata"]["annotations"][talkrooms.TARGETS_ANNOTATION] == "nc-a"


async def test_later_requests_update_targets_and_the_last_one_off_deactivates_the_room() -> None:
    api = FakeApiServer()
    client = client_for(api)
    await client.request(SPEC, session="nc-a", enable=True)
    await client.request(SPEC, session="nc-b", enable=True)
    assert (
        api.objects["talk-abc123"]["metadata"]["annotations"][talkrooms.TARGETS_ANNOTATION]
        == "nc-a,nc-b"
    )
    await client.request(SPEC, session="nc-a", enable=False)
    await client.request(SPEC, session="nc-b", enable=False)
    await client.aclose()
    room = api.objects["talk-abc123"]
    assert room["spec"]["active"] is False
    assert room["metadata"]["annotations"][talkrooms.TARGETS_ANNOTATION] == ""


async def test_a_request_without_a_language_keeps_the_language_the_room_was_switched_to() -> None:
    # Talk sends langId only when a participant chose one: another participant opting in or out
    # must not put the ExApp's default language back (a room the ExApp joins itself keeps it too).
    api = FakeApiServer()
    client = client_for(api)
    await client.request(SPEC, session="nc-a", enable=True)
    await client.change(SPEC.room_token, language="fr", active=None)
    name = talkrooms.resource_name(SPEC.room_token)
    await client.request(SPEC, session="nc-b", enable=True)
    assert api.objects[name]["spec"]["languages"] == ["fr", "en"]
    await client.request(SPEC, session="nc-a", enable=False)
    assert api.objects[name]["spec"]["languages"] == ["fr", "en"]
    # a request that names a language does switch the room
    await client.request(replace(SPEC, language="en"), session="nc-a", enable=True)
    await client.aclose()
    assert api.objects[name]["spec"]["languages"] == ["en", "fr"]


async def test_a_first_request_with_a_language_puts_it_first() -> None:
    api = FakeApiServer()
    client = client_for(api)
    await client.request(replace(SPEC, language="fr"), session="nc-a", enable=True)
    await client.aclose()
    assert api.objects["talk-abc123"]["spec"]["languages"] == ["fr", "en"]


async def test_turning_captions_off_in_a_room_without_a_talkroom_creates_nothing() -> None:
    api = FakeApiServer()
    client = client_for(api)
    await client.request(SPEC, session="nc-a", enable=False)
    await client.aclose()
    assert api.objects == {}


async def test_an_api_error_is_a_cluster_error() -> None:
    client = client_for(FakeApiServer(forbid=True))
    with pytest.raises(talkrooms.ClusterError, match="403"):
        await client.request(SPEC, session="nc-a", enable=True)
    await client.aclose()


def test_resource_names_are_dns_labels() -> None:
    assert talkrooms.resource_name("AbC_12.3") == "talk-abc-12-3"
    assert len(talkrooms.resource_name("x" * 100)) <= 63


async def test_changing_a_room_reorders_its_languages_and_sets_active() -> None:
    api = FakeApiServer()
    client = client_for(api)
    assert not await client.change("AbC123", language="fr", active=None)
    await client.request(SPEC, session="nc-a", enable=True)
    assert await client.change("AbC123", language="fr", active=False)
    await client.aclose()
    spec = api.objects["talk-abc123"]["spec"]
    assert (spec["languages"], spec["active"]) == (["fr", "en"], False)


async def test_a_talkroom_is_accepted_once_its_status_describes_its_generation() -> None:
    api = FakeApiServer()
    client = client_for(api)
    await client.request(SPEC, session="nc-a", enable=True)
    name = talkrooms.resource_name(SPEC.room_token)
    with pytest.raises(talkrooms.NotAccepted, match=f"did not accept TalkRoom {name} within 0.3 s"):
        await client.wait_accepted(SPEC.room_token, within=0.3)
    api.objects[name]["status"] = {"observedGeneration": 1, "phase": "Provisioning"}
    await client.wait_accepted(SPEC.room_token, within=0.3)
    api.objects[name]["status"] = {
        "observedGeneration": 1,
        "phase": "Failed",
        "message": "TalkRoom spec lacks hpbUrl",
    }
    with pytest.raises(
        talkrooms.NotAccepted, match=r"refused TalkRoom .*: TalkRoom spec lacks hpbUrl"
    ):
        await client.wait_accepted(SPEC.room_token, within=0.3)
    await client.wait_accepted("missing", within=0.3)  # no TalkRoom: nothing to wait for
