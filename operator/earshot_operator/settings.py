"""The operator's one settings object, built from the environment at start-up and passed down.

Every environment read of the operator happens here (prefix ``EARSHOT_OPERATOR_``); the rest of
the package receives an :class:`OperatorSettings` explicitly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Engines a session or room may ask for (the CRD enum carries the same values).
ENGINES = ("paraformer", "kyutai")


class SecretKeyRef(BaseModel):
    """A key in a Secret of the resource's namespace (pods can only read their own namespace)."""

    model_config = ConfigDict(frozen=True)

    name: str
    key: str


class Resources(BaseModel):
    """CPU and memory requests and limits of one container, in Kubernetes quantity syntax."""

    model_config = ConfigDict(frozen=True)

    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    cpu_limit: str | None = None
    memory_limit: str | None = "512Mi"


#: A Kubernetes name that is a DNS label (namespaces, Deployments).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


class Pool(BaseModel):
    """A pool of shared G.711 gateways the chart runs: where its sessions stream, on which engine.

    A pool is capacity sized with the release (its Deployment, Service and autoscaler come from
    the chart and change at Helm's pace), not a resource of its own: the operator only registers
    sessions with it, so it learns the pools it may place sessions on from its settings.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=rf"^{_LABEL}$", max_length=63)
    #: host:port of the pool's Service, e.g. ``earshot-pool-default.earshot.svc:8000``.
    address: str
    engine: Literal["paraformer", "kyutai"] = "paraformer"
    #: ``namespace/name`` of the pool's Deployment: its pods say whether the pool can take a
    #: stream (a session on a pool without a Ready gateway is not Ready). Empty: not checked.
    deployment: str = Field("", pattern=rf"^({_LABEL}/{_LABEL})?$")

    @property
    def deployment_ref(self) -> tuple[str, str] | None:
        """The Deployment's (namespace, name); None when the pool is not checked."""
        if not self.deployment:
            return None
        namespace, _, name = self.deployment.partition("/")
        return namespace, name


#: ``default_placement`` (and ``spec.placement``) value for a gateway of the session's own.
DEDICATED = "dedicated"


class OperatorSettings(BaseSettings):
    """Images, engine endpoints, storage Secrets, resources and timings of the operator.

    Nested values are set with a double underscore, e.g.
    ``EARSHOT_OPERATOR_GATEWAY_RESOURCES__CPU_REQUEST=250m``, or as JSON for the whole field.
    """

    model_config = SettingsConfigDict(
        env_prefix="EARSHOT_OPERATOR_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    gateway_image: str = Field(
        "ghcr.io/earshot-dev/earshot:0.1.0", description="Image of the gateway and persister."
    )
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of both containers.")
    triton_paraformer_url: str = Field(
        "triton-paraformer.earshot.svc:8001", description="gRPC endpoint of the paraformer pool."
    )
    triton_kyutai_url: str = Field(
        "triton-kyutai.earshot.svc:8001", description="gRPC endpoint of the kyutai (GPU) pool."
    )
    redis_url_secret: SecretKeyRef = Field(
        SecretKeyRef(name="earshot-storage", key="redis-url"),
        description="Secret key holding the Redis URL (partials).",
    )
    mysql_url_secret: SecretKeyRef = Field(
        SecretKeyRef(name="earshot-storage", key="mysql-url"),
        description="Secret key holding the MySQL URL (segments).",
    )
    gateway_resources: Resources = Resources()
    persister_resources: Resources = Resources(
        cpu_request="50m", memory_request="64Mi", memory_limit="256Mi"
    )
    gateway_port: int = Field(8000, ge=1, le=65535, description="Container and Service port.")
    persister_port: int = Field(
        8001, ge=1, le=65535, description="Port of the persister sidecar's /health and /metrics."
    )
    drift_interval_seconds: float = Field(
        60.0, gt=0, description="How often every resource is re-checked for drift."
    )
    metrics_port: int = Field(
        8080, ge=0, le=65535, description="Port of the operator's /metrics (0: off)."
    )
    uninstall_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="How long the uninstall hook waits for the sessions and rooms to be gone.",
    )
    release: str = Field(
        "",
        pattern=r"^([a-z0-9]([-.a-z0-9]*[a-z0-9])?)?$",  # a release name, a valid label value
        max_length=63,
        description="The Helm release the operator belongs to, labelled on every object it makes"
        " (earshot.dev/release; the release's PodMonitor selects by it); empty: no label.",
    )
    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Namespaces to watch, comma-separated; empty: the whole cluster."
    )

    # Where and how the gateway pods run: the chart passes its own values through these, so the
    # pods the operator makes are scheduled and pulled like the pods the chart renders.
    image_pull_secrets: tuple[str, ...] = Field(
        (), description="Names of the image pull Secrets of every gateway pod (JSON list)."
    )
    node_selector: dict[str, str] = Field(
        {}, description="Node selector of every gateway pod (JSON object)."
    )
    tolerations: tuple[dict[str, Any], ...] = Field(
        (), description="Tolerations of every gateway pod (JSON list of Kubernetes tolerations)."
    )
    affinity: dict[str, Any] = Field(
        {}, description="Affinity of every gateway pod (JSON object, Kubernetes' Affinity)."
    )
    priority_class_name: str = Field(
        "", description="PriorityClass of every gateway pod (empty: the cluster's default)."
    )
    gateway_service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="Type of the Service in front of each gateway."
    )

    # An Ingress per session (none while the host is empty): the way in from outside the cluster
    # when Services of type LoadBalancer are not wanted. Rooms need none (their gateways dial out).
    gateway_ingress_host: str = Field(
        "", description="Host of the sessions' Ingress rules (empty: no Ingress)."
    )
    gateway_ingress_class: str = Field(
        "", description="IngressClass of the sessions' Ingresses (empty: the cluster's default)."
    )
    gateway_ingress_tls_secret: str = Field(
        "", description="TLS Secret of the host, in each session's namespace (empty: no TLS)."
    )
    gateway_ingress_annotations: dict[str, str] = Field(
        {}, description="Annotations of the sessions' Ingresses (JSON object)."
    )

    # Gateway pools (the chart's ``pools``): sessions placed on one stream through its Service
    # and are Ready once registered, without a pod of their own.
    pools: tuple[Pool, ...] = Field(
        (), description="The gateway pools sessions may be placed on (JSON list of objects)."
    )
    default_placement: str = Field(
        DEDICATED,
        description="Placement of a session whose spec names none: a pool's name or 'dedicated'.",
    )
    pool_check_interval_seconds: float = Field(
        5.0,
        gt=0,
        description="How often each pool's Deployment is read for whether it can take a stream.",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _default_placement_exists(self) -> OperatorSettings:
        names = [pool.name for pool in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        if self.default_placement not in (DEDICATED, *names):
            raise ValueError(
                f"default placement {self.default_placement!r} is neither 'dedicated' nor one of "
                f"the pools {names}"
            )
        return self

    def pool(self, name: str) -> Pool | None:
        """The pool named ``name`` (None: no such pool)."""
        return next((pool for pool in self.pools if pool.name == name), None)

    def triton_url(self, engine: str) -> str:
        """The Triton endpoint serving ``engine``.

        Raises:
            KeyError: ``engine`` is not one of :data:`ENGINES`.
        """
        return {"paraformer": self.triton_paraformer_url, "kyutai": self.triton_kyutai_url}[engine]
