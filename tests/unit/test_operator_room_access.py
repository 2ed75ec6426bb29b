"""A room's gateway reads its own TalkRoom: its ServiceAccount, Role and RoleBinding. Pure."""

from __future__ import annotations

from typing import Any

from earshot.gateways.talk.configuration import TalkSettings
from earshot_operator import gateways, manifests
from earshot_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


def _body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "talk", "uid": "u-9", "generation": 1},
        "spec": spec,
    }


ROOM = _body(
    "TalkRoom",
    "standup",
    {
        "roomToken": "r00m",
        "hpbUrl": "wss://hpb.example/spreed",
        "nextcloudUrl": "https://cloud.example",
        "internalSecretRef": {"name": "hpb"},
        "languages": ["zh", "en"],
    },
)


def test_a_room_gateway_may_read_only_its_own_talkroom_and_patch_only_its_status() -> None:
    gateway = gateways.build(ROOM, SETTINGS)
    account, role, binding = manifests.build_access(gateway)
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == gateway.name == "troom-standup"
    assert role["rules"] == [
        {
            "apiGroups": ["earshot.dev"],
            "resources": ["talkrooms"],
            "resourceNames": ["standup"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["earshot.dev"],
            "resources": ["talkrooms/status"],
            "resourceNames": ["standup"],
            "verbs": ["patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "troom-standup",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "troom-standup", "namespace": "talk"}
    ]
    for manifest in (account, role, binding):
        [owner] = manifest["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("TalkRoom", "standup", "u-9")


def test_the_room_pod_runs_as_its_account_with_its_token_mounted() -> None:
    gateway = gateways.build(ROOM, SETTINGS)
    pod = manifests.build_deployment(gateway, settings=SETTINGS)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "troom-standup"
    assert pod["automountServiceAccountToken"] is True


def test_a_session_gateway_gets_no_account_and_no_token() -> None:
    gateway = gateways.build(_body("TranscriptionSession", "call-1", {}), SETTINGS)
    pod = manifests.build_deployment(gateway, settings=SETTINGS)["spec"]["template"]["spec"]
    assert manifests.build_access(gateway) == []
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False


def test_putting_another_language_first_does_not_change_the_pod_template() -> None:
    english_first = {**ROOM, "spec": {**ROOM["spec"], "languages": ["en", "zh"]}}
    before = manifests.build_deployment(gateways.build(ROOM, SETTINGS), settings=SETTINGS)
    after = manifests.build_deployment(gateways.build(english_first, SETTINGS), settings=SETTINGS)
    assert before["spec"]["template"] == after["spec"]["template"]


def test_the_room_pod_environment_names_its_room_and_talkroom() -> None:
    gateway = gateways.build(ROOM, SETTINGS)
    data = manifests.build_configmap(gateway)["data"]
    talk = TalkSettings.model_validate({"EARSHOT_TALK_INTERNAL_SECRET": "s", **data}, by_alias=True)
    assert (talk.room_token, talk.talkroom_name, talk.namespace) == ("r00m", "standup", "talk")
    assert talk.room_mode
    assert talk.languages == ("en", "zh")
