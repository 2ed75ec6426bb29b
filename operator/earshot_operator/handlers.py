"""Thin kopf handlers: fetch, build, apply, patch status (the work lives in ``reconciling``).

Handlers are registered into an explicit registry by :func:`register`, with the settings,
client and metrics passed in: nothing here reads the environment or keeps global state.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from earshot_operator import claiming, drifting, pools, poolwatching, reconciling, resources
from earshot_operator.clients import KubeClient
from earshot_operator.metrics import OperatorMetrics
from earshot_operator.settings import OperatorSettings, Pool


@dataclasses.dataclass(frozen=True)
class Loops:
    """The operator's own loops, which its /healthz watches."""

    drift: drifting.DriftLoop
    pools: poolwatching.PoolWatch

    @property
    def healthy(self) -> bool:
        """False once either loop has ended by itself."""
        return self.drift.healthy and self.pools.healthy


def register(
    registry: kopf.OperatorRegistry,
    *,
    settings: OperatorSettings,
    client: KubeClient,
    metrics: OperatorMetrics,
    login: kopf.ConnectionInfo,
) -> Loops:
    """Register every handler of the operator into ``registry``; the loops they start."""
    kopf.on.startup(registry=registry, id="configure")(configure)

    async def recheck_pool(pool: Pool) -> None:
        # a pool's gateways stopped or came back: its sessions' status says so at once
        await drift.check_all((resources.SESSION,), where=pools.placed_on(pool))

    async def recheck_drift(kind: resources.Kind, body: Mapping[str, Any]) -> None:
        await reconcile(kind, body, drift=True)

    pool_watch = poolwatching.PoolWatch(client, settings=settings, on_change=recheck_pool)
    drift = drifting.DriftLoop(client, settings=settings, reconcile=recheck_drift)
    claims = claiming.SessionClaims()
    reconcile = _Reconciler(settings, client, metrics, pool_watch, claims)
    loops = Loops(drift, pool_watch)

    @kopf.on.event(
        resources.GROUP,
        resources.VERSION,
        resources.SESSION.plural,
        registry=registry,
        id="session_claims",
    )
    async def session_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        # kopf runs this before the session's own handlers for the same event: their reconcile
        # sees the session's claim
        resource = claiming.resource_of(body)
        if event["type"] == "DELETED":
            others = claims.forget(resource, str(body.get("metadata", {}).get("uid") or ""))
        else:
            others = claims.update(resource, claiming.claim_of(body, settings))
        if others:  # an id changed hands: its other claimants register or wait accordingly
            await drift.check_all(
                (resources.SESSION,), where=lambda listed: claiming.resource_of(listed) in others
            )

    @kopf.on.startup(registry=registry, id="drift_start")
    async def start_loops(**_: Any) -> None:  # async: kopf runs sync handlers in threads
        drift.start()
        pool_watch.start()

    @kopf.on.cleanup(registry=registry, id="drift_stop")
    async def stop_loops(**_: Any) -> None:
        await pool_watch.stop()
        await drift.stop()

    @kopf.on.login(registry=registry, id="login")
    def log_in(**_: Any) -> kopf.ConnectionInfo:
        return login

    for kind in resources.KINDS.values():
        _register_kind(registry, kind, reconcile=reconcile, metrics=metrics)

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

    return loops


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
    reconcile: _Reconciler,
    metrics: OperatorMetrics,
) -> None:
    where = (resources.GROUP, resources.VERSION, kind.plural)

    async def on_change(body: kopf.Body, **_: Any) -> None:
        await reconcile(kind, body)

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


@dataclasses.dataclass(frozen=True)
class _Reconciler:
    """Reconciles a resource with what every handler shares, and records its phase."""

    settings: OperatorSettings
    client: KubeClient
    metrics: OperatorMetrics
    pool_watch: poolwatching.PoolWatch
    claims: claiming.SessionClaims

    async def __call__(
        self, kind: resources.Kind, body: Mapping[str, Any], *, drift: bool = False
    ) -> None:
        """Reconcile ``body`` (``drift``: a periodic re-check)."""
        with self.metrics.timing(kind.kind):
            outcome = await reconciling.reconcile(
                self.client,
                body,
                settings=self.settings,
                pool_watch=self.pool_watch,
                claims=self.claims,
                drift=drift,
            )
        self.metrics.record_phase(
            outcome.kind, outcome.namespace, name=outcome.name, phase=outcome.phase
        )
