"""The operator runs with exactly its ClusterRole: every other e2e test proves the role suffices,
these prove the token is not an administrator's."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.controlplane.cluster import ControlPlane
from tests.e2e.controlplane.operators import OperatorProcess


def _can_i(operator_process: OperatorProcess, *args: str) -> bool:
    done = subprocess.run(
        ["kubectl", f"--kubeconfig={operator_process.kubeconfig}", "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() == "yes"


@pytest.mark.parametrize(
    "verb_resource",
    [
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("watch", "deployments.apps"),
        ("create", "services"),
        ("create", "secrets"),
        ("patch", "transcriptionsessions.earshot.dev"),
        ("patch", "talkrooms.earshot.dev/status"),
        # a room gateway's own ServiceAccount, Role (naming its TalkRoom) and RoleBinding
        ("create", "serviceaccounts"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        # the gateway pods, watched for why a gateway does not come up
        ("watch", "pods"),
        ("list", "pods"),
        # the Events it posts, and a session's Ingress rule
        ("create", "events"),
        ("create", "ingresses.networking.k8s.io"),
        ("list", "talkrooms.earshot.dev"),
    ],
)
def test_operator_token_may_do_what_the_operator_does(
    operator_process: OperatorProcess, verb_resource: tuple[str, str]
) -> None:
    assert _can_i(operator_process, *verb_resource, "--all-namespaces")


@pytest.mark.parametrize(
    "verb_resource",
    [
        ("delete", "deployments.apps"),
        ("list", "secrets"),
        ("patch", "secrets"),
        ("delete", "pods"),
        ("create", "pods"),
        ("delete", "ingresses.networking.k8s.io"),
        ("create", "transcriptionsessions.earshot.dev"),
        ("delete", "transcriptionsessions.earshot.dev"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("delete", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("*", "*"),
    ],
)
def test_operator_token_is_refused_everything_else(
    operator_process: OperatorProcess, verb_resource: tuple[str, str]
) -> None:
    assert not _can_i(operator_process, *verb_resource, "--all-namespaces")


def test_operator_token_is_not_in_system_masters(
    control_plane: ControlPlane, operator_process: OperatorProcess
) -> None:
    kubeconfig = operator_process.kubeconfig.read_text()
    assert '"token"' in kubeconfig
    assert "client-certificate" not in kubeconfig
    assert not _can_i(operator_process, "get", "nodes")
