"""The operator process: settings from the environment, login, metrics server, kopf's loop."""

from __future__ import annotations

import asyncio
import logging

import kopf

from earshot_operator import handlers
from earshot_operator.clients import KubeClient
from earshot_operator.metrics import MetricsServer, OperatorMetrics
from earshot_operator.settings import OperatorSettings

logger = logging.getLogger("earshot_operator")


def main() -> None:
    """Entry point of ``python -m earshot_operator``: run until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run(OperatorSettings()))


def connection_info() -> kopf.ConnectionInfo:
    """Credentials of the pod's service account in a cluster, else of the kubeconfig.

    Raises:
        kopf.LoginError: neither is available.
    """
    kopf_settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=kopf_settings) or kopf.login_with_kubeconfig(
        settings=kopf_settings
    )
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig")
    return info


async def run(settings: OperatorSettings) -> None:
    """Serve the custom resources until kopf is told to stop."""
    info = connection_info()
    metrics = OperatorMetrics()
    registry = kopf.OperatorRegistry()
    async with KubeClient.connect(info) as client:
        loops = handlers.register(
            registry, settings=settings, client=client, metrics=metrics, login=info
        )
        server = MetricsServer(metrics, port=settings.metrics_port, healthy=lambda: loops.healthy)
        if settings.metrics_port:
            await server.start()
            logger.info("metrics on :%d/metrics", settings.metrics_port)
        try:
            await kopf.operator(
                registry=registry,
                standalone=True,  # one replica with strategy Recreate: no peering needed
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
            )
        finally:
            if settings.metrics_port:
                await server.stop()
