"""Thin kopf handlers: fetch, build, apply, patch status (the work lives in ``reconciling``).

Handlers are registered into an explicit registry by :func:`register`, with the settings,
client and metrics passed in: nothing here reads the environment or keeps global state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from earshot_operator import drifting, reconciling, resources
from earshot_operator.clients import KubeClient
from earshot_operator.metrics import OperatorMetrics
from earshot_operator.settings import OperatorSettings


def register(
    registry: kopf.OperatorRegistry,
    *,
    settings: OperatorSettings,
    client: KubeClient,
    metrics: OperatorMetrics,
    login: kopf.ConnectionInfo,
) -> drifting.DriftLoop:
    """Register every handler of the operator into ``registry``; the drift loop they start."""
    kopf.on.startup(registry=registry, id="configure")(configure)
    drift = drifting.DriftLoop(
        client,
        settings=settings,
        reconcile=lambda kind, body: _reconcile(
            kind, body, settings=settings, client=client, metrics=metrics, drift=True
        ),
    )

    @kopf.on.startup(registry=registry, id="drift_start")
    async def start_drift(**_: Any) -> None:  # async: kopf runs sync handlers in threads
        drift.start()

    @kopf.on.cleanup(registry=registry, id="drift_stop")
    async def stop_drift(**_: Any) -> None:
        await drift.stop()

    @kopf.on.login(registry=registry, id="login")
    def log_in(**_: Any) -> kopf.ConnectionInfo:
        return login

    for kind in resources.KINDS.values():
        _register_kind(registry, kind, settings=settings, client=client, metrics=metrics)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={resources.MANAGED_BY_LABEL: resources.MANAGED_BY},
        registry=registry,
        id="deployment_event",
    )
    async def deployment_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED":
            return  # the owner is gone too, or the drift check will recreate it
        outcome = await reconciling.refresh_status(client, body, settings=settings)
        if outcome is not None:
            metrics.record_phase(
                outcome.kind, outcome.namespace, name=outcome.name, phase=outcome.phase
            )

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={resources.MANAGED_BY_LABEL: resources.MANAGED_BY},
        registry=registry,
        id="pod_event",
    )
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        # a pod says at once what is wrong (image pull, config, scheduling, crash loop); its
        # Deployment only after the progress deadline: re-observe the owner from here
        if event["type"] == "DELETED":
            return
        outcome = await reconciling.refresh_from_pod(client, body, settings=settings)
        if outcome is not None:
            metrics.record_phase(
                outcome.kind, outcome.namespace, name=outcome.name, phase=outcome.phase
            )

    return drift


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own settings: state in earshot.dev annotations, only warnings posted as Events.

    Scanning (watching CRDs and namespaces for new resources) is off: the CRDs are installed
    before the operator, and the role then needs no access to CustomResourceDefinitions.
    """
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="earshot.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="earshot.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300


def _register_kind(
    registry: kopf.OperatorRegistry,
    kind: resources.Kind,
    *,
    settings: OperatorSettings,
    client: KubeClient,
    metrics: OperatorMetrics,
) -> None:
    where = (resources.GROUP, resources.VERSION, kind.plural)

    async def on_change(body: kopf.Body, **_: Any) -> None:
        await _reconcile(kind, body, settings=settings, client=client, metrics=metrics)

    def on_delete(namespace: str | None, name: str | None, **_: Any) -> None:
        metrics.record_phase(kind.kind, namespace or "", name=name or "", phase=None)

    kopf.on.create(*where, registry=registry, id=f"{kind.short}_create")(on_change)
    kopf.on.update(*where, field="spec", registry=registry, id=f"{kind.short}_update")(on_change)
    kopf.on.resume(*where, registry=registry, id=f"{kind.short}_resume")(on_change)
    # No timers or daemons (the drift check is ``drifting``'s own loop) and an optional delete
    # handler: kopf then needs no finalizer, so a deleted resource goes at once, with or without
    # a running operator, and the GC takes its objects. kopf removes its finalizer from a
    # resource an older operator left it on, at the resource's next event.
    kopf.on.delete(*where, optional=True, registry=registry, id=f"{kind.short}_delete")(on_delete)


async def _reconcile(
    kind: resources.Kind,
    body: Mapping[str, Any],
    *,
    settings: OperatorSettings,
    client: KubeClient,
    metrics: OperatorMetrics,
    drift: bool = False,
) -> None:
    with metrics.timing(kind.kind):
        outcome = await reconciling.reconcile(client, body, settings=settings, drift=drift)
    metrics.record_phase(outcome.kind, outcome.namespace, name=outcome.name, phase=outcome.phase)
