"""A checker of the Kubernetes Pod Security Standards' ``restricted`` profile, for pod specs.

Kubernetes 1.20 (the control plane of tests/e2e) has no PodSecurity admission, so the tests
apply the profile themselves, control by control, as the Pod Security Standards page defines
it (https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Baseline" and
"Restricted", policy version latest). Each violation is a sentence naming the field, so a
failing test says what to change. Pure: dicts in, strings out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Manifest = Mapping[str, Any]

#: Baseline: capabilities a container may add beyond the runtime's default set.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: Restricted: the only capability a container may add (after dropping ALL).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Restricted: the volume types a pod may use.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: Baseline: the sysctls a pod may set.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
_VOLUME_KEYS = frozenset({"name"})


def pod_specs(manifest: Manifest) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(where, pod metadata, pod spec) of a Pod, of a workload's template, or of a CronJob's."""
    kind, name = manifest.get("kind", ""), manifest.get("metadata", {}).get("name", "")
    spec = manifest.get("spec") or {}
    if kind == "Pod":
        yield f"Pod/{name}", manifest.get("metadata") or {}, spec
    elif kind == "CronJob":
        template = spec["jobTemplate"]["spec"]["template"]
        yield f"CronJob/{name}", template.get("metadata") or {}, template["spec"]
    elif "template" in spec and "spec" in (spec.get("template") or {}):
        template = spec["template"]
        yield f"{kind}/{name}", template.get("metadata") or {}, template["spec"]


def violations(metadata: Manifest, spec: Manifest) -> list[str]:
    """Every way the pod breaks the ``restricted`` profile ([]: it passes)."""
    found = [*_pod_level(metadata, spec)]
    pod_context = spec.get("securityContext") or {}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or ():
            found += [
                f"{kind[:-1]} {container.get('name')!r}: {problem}"
                for problem in _container(container, pod_context)
            ]
    return found


def _pod_level(metadata: Manifest, spec: Manifest) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"spec.{field} must be unset or false"
    context = spec.get("securityContext") or {}
    yield from _selinux(context.get("seLinuxOptions"), "spec.securityContext")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in _SECCOMP_ALLOWED:
        yield f"spec.securityContext.seccompProfile.type {seccomp!r} is not allowed"
    if context.get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser must not be 0"
    for sysctl in context.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls: {sysctl.get('name')!r} is not a safe sysctl"
    for volume in spec.get("volumes") or ():
        types = set(volume) - _VOLUME_KEYS
        if not types <= RESTRICTED_VOLUMES:
            yield f"volume {volume.get('name')!r}: type {sorted(types)} is not allowed"
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield f"annotation {key}: AppArmor profile {value!r} is not allowed"


def _container(container: Manifest, pod: Manifest) -> Iterator[str]:
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        yield "securityContext.privileged must be unset or false"
    if context.get("allowPrivilegeEscalation") is not False:
        yield "securityContext.allowPrivilegeEscalation must be false"
    if context.get("procMount", "Default") != "Default":
        yield "securityContext.procMount must be Default"
    if context.get("windowsOptions", {}).get("hostProcess"):
        yield "securityContext.windowsOptions.hostProcess must be unset or false"
    yield from _selinux(context.get("seLinuxOptions"), "securityContext")
    if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
        yield "runAsNonRoot must be true (in the container's or the pod's securityContext)"
    if context.get("runAsUser") == 0:
        yield "securityContext.runAsUser must not be 0"
    seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
    if seccomp not in _SECCOMP_ALLOWED:
        yield "seccompProfile.type must be RuntimeDefault or Localhost (container's or pod's)"
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or ()):
        yield "securityContext.capabilities.drop must contain ALL"
    added = set(capabilities.get("add") or ())
    if not added <= RESTRICTED_CAPABILITIES & BASELINE_CAPABILITIES:
        yield f"securityContext.capabilities.add {sorted(added)} may only hold NET_BIND_SERVICE"
    for port in container.get("ports") or ():
        if port.get("hostPort"):
            yield f"port {port.get('name')!r}: hostPort must be unset or 0"


def _selinux(options: Manifest | None, where: str) -> Iterator[str]:
    if not options:
        return
    if options.get("type", "") not in _SELINUX_TYPES:
        yield f"{where}.seLinuxOptions.type {options['type']!r} is not allowed"
    for field in ("user", "role"):
        if options.get(field):
            yield f"{where}.seLinuxOptions.{field} must be unset"
