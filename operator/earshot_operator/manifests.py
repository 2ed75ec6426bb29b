"""Kubernetes objects for a gateway: pure functions from a Gateway and settings to dicts.

No I/O: the handlers apply what these return. Every object carries an owner reference to the
custom resource, so deleting the resource lets the garbage collector remove them all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from earshot_operator import dataplane, resources
from earshot_operator.gateways import Gateway
from earshot_operator.settings import OperatorSettings, Resources

Manifest = dict[str, Any]


def build_token_secret(gateway: Gateway, *, token: str) -> Manifest:
    """The Secret holding the gateway's access token (minted once, never rotated by drift)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(gateway, gateway.token_secret),
        "type": "Opaque",
        "data": {dataplane.TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def build_access(gateway: Gateway) -> list[Manifest]:
    """The ServiceAccount of a gateway that reads its own resource, its Role and RoleBinding.

    Least privilege: the Role names the one TalkRoom (get/list/watch it, patch its status) and
    allows creating Events; nothing else. Empty for gateways without API access.
    """
    account = gateway.service_account
    if account is None:
        return []
    owner = gateway.owner
    group = resources.API_VERSION.split("/")[0]
    rules = [
        {
            "apiGroups": [group],
            "resources": [owner.kind.plural],
            "resourceNames": [owner.name],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [group],
            "resources": [f"{owner.kind.plural}/status"],
            "resourceNames": [owner.name],
            "verbs": ["patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(gateway, account)},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _metadata(gateway, account),
            "rules": rules,
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(gateway, account),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
        },
    ]


def build_configmap(gateway: Gateway) -> Manifest:
    """The ConfigMap of the gateway's non-secret settings; each container takes its own keys."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(gateway, gateway.name),
        "data": dict(sorted(gateway.config.items())),
    }


def build_service(gateway: Gateway, *, settings: OperatorSettings) -> Manifest:
    """The Service in front of the gateway's port (type ``gateway_service_type``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gateway, gateway.name),
        "spec": {
            "type": settings.gateway_service_type,
            "selector": _selector(gateway),
            "ports": [
                {
                    "name": dataplane.PORT_NAME,
                    "port": settings.gateway_port,
                    "targetPort": dataplane.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_ingress(gateway: Gateway, *, settings: OperatorSettings) -> Manifest | None:
    """The Ingress rule routing the session's WebSocket path to its Service (None: no Ingress).

    One rule per session, on the one host of the settings: the path (``/ws/transcribe/<id>``)
    tells sessions apart, so a single DNS name and certificate serve them all.
    """
    if gateway.ingress_path is None:
        return None
    host = settings.gateway_ingress_host
    metadata = _metadata(gateway, gateway.name)
    if settings.gateway_ingress_annotations:
        metadata["annotations"] = dict(sorted(settings.gateway_ingress_annotations.items()))
    backend = {"service": {"name": gateway.name, "port": {"name": dataplane.PORT_NAME}}}
    spec: Manifest = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {"path": gateway.ingress_path, "pathType": "Exact", "backend": backend}
                    ]
                },
            }
        ]
    }
    if settings.gateway_ingress_class:
        spec["ingressClassName"] = settings.gateway_ingress_class
    if settings.gateway_ingress_tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": settings.gateway_ingress_tls_secret}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def build_deployment(gateway: Gateway, *, settings: OperatorSettings) -> Manifest:
    """The gateway Deployment: gateway container, persister sidecar and their shared spool.

    The pod template carries a hash of the settings, so a spec change (say, the codec) changes
    the template and rolls the pod even though the values arrive through the ConfigMap.
    """
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gateway, gateway.name),
        "spec": {
            "replicas": gateway.replicas,
            # one pod per session: two gateways would race on the same sequence numbers
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(gateway)},
            "template": {
                "metadata": {
                    "labels": _labels(gateway),
                    "annotations": {resources.CONFIG_HASH_ANNOTATION: config_hash(gateway)},
                },
                "spec": _pod_spec(gateway, settings),
            },
        },
    }


def config_hash(gateway: Gateway) -> str:
    """A digest of everything the containers read, so any change rolls the pod."""
    payload = {
        "config": dict(sorted(gateway.config.items())),
        "secrets": [(env, ref.name, ref.key) for env, ref in gateway.secret_env],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pod_spec(gateway: Gateway, settings: OperatorSettings) -> Manifest:
    gateway_container = _container(
        dataplane.GATEWAY_CONTAINER, gateway.command, gateway, settings.gateway_resources, settings
    )
    gateway_container["ports"] = [
        {"name": dataplane.PORT_NAME, "containerPort": settings.gateway_port, "protocol": "TCP"}
    ]
    gateway_container["readinessProbe"] = {
        "httpGet": {"path": gateway.health_path, "port": dataplane.PORT_NAME},
        "periodSeconds": 5,
    }
    gateway_container["startupProbe"] = _startup(gateway.liveness_path, dataplane.PORT_NAME)
    gateway_container["livenessProbe"] = _liveness(gateway.liveness_path, dataplane.PORT_NAME)
    persister = _container(
        dataplane.PERSISTER_CONTAINER,
        dataplane.PERSISTER_COMMAND,
        gateway,
        settings.persister_resources,
        settings,
    )
    persister["ports"] = [
        {
            "name": dataplane.PERSISTER_PORT_NAME,
            "containerPort": settings.persister_port,
            "protocol": "TCP",
        }
    ]
    persister["readinessProbe"] = {
        "httpGet": {
            "path": dataplane.PERSISTER_HEALTH_PATH,
            "port": dataplane.PERSISTER_PORT_NAME,
        },
        "periodSeconds": 5,
    }
    persister["startupProbe"] = _startup(
        dataplane.PERSISTER_LIVENESS_PATH, dataplane.PERSISTER_PORT_NAME
    )
    persister["livenessProbe"] = _liveness(
        dataplane.PERSISTER_LIVENESS_PATH, dataplane.PERSISTER_PORT_NAME
    )
    spec: Manifest = {
        "automountServiceAccountToken": False,
        # Pod Security "restricted": non-root, the runtime's default seccomp profile
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [gateway_container, persister],
        "volumes": [{"name": dataplane.SPOOL_VOLUME, "emptyDir": {}}],
        **_placement(settings),
    }
    if gateway.service_account is not None:
        spec["serviceAccountName"] = gateway.service_account
        spec["automountServiceAccountToken"] = True
    return spec


def _startup(path: str, port: str) -> Manifest:
    # Up to 5 min to start before the liveness probe takes over: on a busy node (many pods starting
    # at once, each loading its model) a start can be slow, and a liveness probe that restarts it
    # only makes it start again (30 sessions on 2 cores: 6 to 12 restarts each without this probe,
    # none with it; bench/reports/cluster_sessions.md).
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 5, "failureThreshold": 60}


def _liveness(path: str, port: str) -> Manifest:
    # once started, a few missed answers in a row (30 s): a wedged event loop, not one slow moment
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def _placement(settings: OperatorSettings) -> Manifest:
    """Pull secrets, scheduling and priority from the settings (empty ones are left out)."""
    placement: Manifest = {
        "imagePullSecrets": [{"name": name} for name in settings.image_pull_secrets],
        "nodeSelector": dict(settings.node_selector),
        "tolerations": [dict(toleration) for toleration in settings.tolerations],
        "affinity": dict(settings.affinity),
        "priorityClassName": settings.priority_class_name,
    }
    return {key: value for key, value in placement.items() if value}


def _container(
    name: str,
    command: tuple[str, ...],
    gateway: Gateway,
    requests: Resources,
    settings: OperatorSettings,
) -> Manifest:
    return {
        "name": name,
        "image": settings.gateway_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(command),
        "env": _environment(gateway, name),
        "volumeMounts": [{"name": dataplane.SPOOL_VOLUME, "mountPath": dataplane.SPOOL_PATH}],
        "resources": _resources(requests),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _environment(gateway: Gateway, container: str) -> list[Manifest]:
    """The variables ``container`` reads, by name from the ConfigMap or a Secret (the table of
    which container gets which is ``dataplane.gets``)."""
    config = [
        {"name": env, "valueFrom": {"configMapKeyRef": {"name": gateway.name, "key": env}}}
        for env in sorted(gateway.config)
        if dataplane.gets(container, env, command=gateway.command)
    ]
    secrets = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for env, ref in gateway.secret_env
        if dataplane.gets(container, env, command=gateway.command)
    ]
    return config + secrets


def _resources(values: Resources) -> Manifest:
    limits = {"cpu": values.cpu_limit, "memory": values.memory_limit}
    return {
        "requests": {"cpu": values.cpu_request, "memory": values.memory_request},
        "limits": {key: value for key, value in limits.items() if value is not None},
    }


def _metadata(gateway: Gateway, name: str) -> Manifest:
    owner = gateway.owner
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": _labels(gateway),
        "ownerReferences": [
            {
                "apiVersion": resources.API_VERSION,
                "kind": owner.kind.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
            }
        ],
    }


def _selector(gateway: Gateway) -> dict[str, str]:
    return {resources.NAME_LABEL: "earshot-gateway", resources.INSTANCE_LABEL: gateway.name}


def _labels(gateway: Gateway) -> dict[str, str]:
    labels = {
        **_selector(gateway),
        resources.COMPONENT_LABEL: gateway.owner.kind.component,
        resources.MANAGED_BY_LABEL: resources.MANAGED_BY,
        resources.KIND_LABEL: gateway.owner.kind.short,
    }
    if gateway.release:
        labels[resources.RELEASE_LABEL] = gateway.release
    return labels
