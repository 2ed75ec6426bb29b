"""The operator's own manifests are accepted by a real API server."""

from __future__ import annotations

from tests.e2e.controlplane.cluster import REPO, ControlPlane
from tests.e2e.controlplane.operators import OperatorProcess


def test_operator_deployment_passes_server_side_validation(
    control_plane: ControlPlane, operator_process: OperatorProcess
) -> None:
    manifest = REPO / "operator" / "deploy" / "operator.yaml"
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert "deployment.apps/earshot-operator created (server dry run)" in out
