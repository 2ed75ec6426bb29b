"""Every pod the operator makes passes the restricted Pod Security profile; the checker can fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from earshot_operator import gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests import podsecurity

SETTINGS = OperatorSettings(gateway_image="registry.local/earshot:test")
SESSION = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TranscriptionSession",
    "metadata": {"name": "call-7", "namespace": "tel", "uid": "u-1"},
    "spec": {"userId": "alice"},
}
ROOM = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TalkRoom",
    "metadata": {"name": "standup", "namespace": "talk", "uid": "u-2"},
    "spec": {
        "roomToken": "r00m",
        "hpbUrl": "wss://hpb.example/spreed",
        "nextcloudUrl": "https://cloud.example",
        "internalSecretRef": {"name": "hpb"},
    },
}


def _pod(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = manifests.build_deployment(gateways.build(body, SETTINGS), settings=SETTINGS)
    [(_, metadata, spec)] = podsecurity.pod_specs(deployment)
    return dict(metadata), dict(spec)


@pytest.mark.parametrize("body", [SESSION, ROOM], ids=["session", "room"])
def test_every_gateway_pod_passes_the_restricted_profile(body: dict[str, Any]) -> None:
    metadata, spec = _pod(body)
    assert podsecurity.violations(metadata, spec) == []


def _unset_pod_seccomp(spec: dict[str, Any]) -> None:
    del spec["securityContext"]["seccompProfile"]
    for container in spec["containers"]:
        del container["securityContext"]["seccompProfile"]


def _escalate(spec: dict[str, Any]) -> None:
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _keep_capabilities(spec: dict[str, Any]) -> None:
    spec["containers"][1]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}


def _root(spec: dict[str, Any]) -> None:
    spec["securityContext"] = {**spec["securityContext"], "runAsNonRoot": False, "runAsUser": 0}
    for container in spec["containers"]:
        del container["securityContext"]["runAsNonRoot"]


def _host_path(spec: dict[str, Any]) -> None:
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})


def _host_network(spec: dict[str, Any]) -> None:
    spec["hostNetwork"] = True


def _unconfined(spec: dict[str, Any]) -> None:
    spec["securityContext"]["seccompProfile"] = {"type": "Unconfined"}


def _privileged_init(spec: dict[str, Any]) -> None:
    init = copy.deepcopy(spec["containers"][0])
    init["name"] = "setup"
    init["securityContext"]["privileged"] = True
    spec["initContainers"] = [init]


BREAKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no seccomp profile": (_unset_pod_seccomp, "seccompProfile.type must be RuntimeDefault"),
    "privilege escalation": (_escalate, "allowPrivilegeEscalation must be false"),
    "capabilities kept": (_keep_capabilities, "capabilities.drop must contain ALL"),
    "root": (_root, "runAsNonRoot must be true"),
    "hostPath volume": (_host_path, "volume 'host': type ['hostPath'] is not allowed"),
    "host network": (_host_network, "spec.hostNetwork must be unset or false"),
    "unconfined seccomp": (_unconfined, "seccompProfile.type 'Unconfined' is not allowed"),
    "privileged init container": (_privileged_init, "initContainer 'setup': securityContext.priv"),
}


@pytest.mark.parametrize("name", BREAKS)
def test_the_checker_names_each_broken_control(name: str) -> None:
    metadata, spec = _pod(SESSION)
    spec = copy.deepcopy(spec)
    breaking, expected = BREAKS[name]
    breaking(spec)
    found = podsecurity.violations(metadata, spec)
    assert any(expected in problem for problem in found), found
