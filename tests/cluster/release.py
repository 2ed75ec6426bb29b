"""``helm install`` of charts/earshot into the test cluster, the way an SRE installs it.

The images come from tests/cluster/images.py (built here, imported into containerd, pull policy
Never: ``images.local_values()``); tests/cluster/values.yaml sizes the install for a 2-core node and
points the Triton CPU pool's model provisioning at a claim that already holds the tiny Paraformer
(the chart's fetch init container then finds the model and fetches nothing: no network here). That
model is earshot's own tiny Paraformer from its cache directory (``EARSHOT_CACHE_DIR``, by default
``~/.cache/earshot``), built there on first use as ``earshot demo`` builds it. A
node has no volume provisioner, so the harness's folder backs two hostPath PersistentVolumes: the
models and the evaluation MariaDB's data.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from earshot.engines import paraformer
from earshot.settings import Settings
from tests.chart.charts import CHART, helm
from tests.cluster import images
from tests.cluster.harness import Cluster, ClusterError

RELEASE: Final = "earshot"
NAMESPACE: Final = "earshot"
VALUES: Final = Path(__file__).with_name("values.yaml")
MODELS_CLAIM: Final = "earshot-models"
REPO: Final = Path(__file__).resolve().parents[2]
#: docs/samples/transcriptionsession.yaml, the session an SRE applies first.
SAMPLE_SESSION: Final[dict[str, Any]] = yaml.safe_load(
    (REPO / "docs" / "samples" / "transcriptionsession.yaml").read_text()
)
INSTALL_TIMEOUT_S: Final = 600.0
#: How much longer than its own ``--timeout`` a waiting kubectl process may run.
KUBECTL_SLACK_S: Final = 30.0


@dataclasses.dataclass(frozen=True)
class Release:
    """An installed release: where it lives and the values files it was installed with."""

    cluster: Cluster
    namespace: str
    values: tuple[Path, ...]

    def helm(self, *args: str, timeout: float = INSTALL_TIMEOUT_S) -> str:
        """Run helm against the cluster in the release's namespace."""
        return helm(
            *args,
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--namespace",
            self.namespace,
            timeout=timeout,
        )

    def kubectl(self, *args: str, stdin: str | None = None, timeout_s: float = 120.0) -> str:
        """kubectl in the release's namespace."""
        return self.cluster.kubectl("-n", self.namespace, *args, stdin=stdin, timeout_s=timeout_s)

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json`` in the release's namespace, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def secret_value(self, name: str, key: str) -> str:
        """One key of a Secret, decoded."""
        data = self.get("secret", name)["data"]
        return base64.b64decode(data[key]).decode()

    def exec(self, pod: str, container: str, *argv: str) -> str:
        """Run ``argv`` in a container of a pod (kubelet's exec, through the apiserver)."""
        return self.kubectl("exec", pod, "-c", container, "--", *argv)

    def mysql(self, query: str) -> list[list[str]]:
        """The rows ``query`` gives in the evaluation MariaDB, as earshot's user, each a list."""
        password = self.secret_value(f"{RELEASE}-storage", "mysql-password")
        out = self.exec(
            self.pod_of("mysql"), "mariadb", "mariadb", "-uearshot", f"-p{password}", "earshot",
            "--batch", "--skip-column-names", "-e", query,
        )  # fmt: skip
        return [line.split("\t") for line in out.splitlines()]

    def pod_of(self, component: str) -> str:
        """The name of the one running pod of a chart component (redis, mysql, operator, ...)."""
        pods = self.get("pods", "-l", f"app.kubernetes.io/component={component}")["items"]
        running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(running) == 1, [p["metadata"]["name"] for p in pods]
        name: str = running[0]["metadata"]["name"]
        return name


def load_images(cluster: Cluster, progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Build (or reuse) every image the chart's test values run and import it into containerd."""
    archives = images.build_images(progress=progress)
    for reference, archive in archives.items():
        started = time.monotonic()
        cluster.import_image(archive)
        progress(f"imported {reference} in {time.monotonic() - started:.1f} s")
    return archives


@contextlib.contextmanager
def installed_release(
    cluster: Cluster, *, namespace: str = NAMESPACE, values: dict[str, Any] | None = None
) -> Iterator[Release]:
    """Install the chart into ``namespace`` and wait for every pod to be Ready.

    ``values`` go on top of the test values (each namespace gets its own volumes, so a second
    release in the same cluster finds its own empty MariaDB).
    """
    load_images(cluster)
    cluster.kubectl("create", "namespace", namespace)
    _provide_volumes(cluster, namespace)
    local = cluster.folder / f"local-images-{namespace}.yaml"
    local.write_text(json.dumps(images.local_values(), indent=2))
    files = [local, VALUES]
    if values:
        extra = cluster.folder / f"values-{namespace}.yaml"
        extra.write_text(json.dumps(values, indent=2))
        files.append(extra)
    release = Release(cluster=cluster, namespace=namespace, values=tuple(files))
    values_args = [arg for path in release.values for arg in ("--values", str(path))]
    release.helm("install", RELEASE, str(CHART), *values_args)
    wait_all_ready(release)
    yield release


def wait_all_ready(release: Release, timeout_s: float = INSTALL_TIMEOUT_S) -> None:
    """Wait until every workload of the namespace has rolled out and every pod is Ready."""
    for kind in ("deployment", "statefulset"):
        for item in release.get(kind)["items"]:
            release.kubectl(
                "rollout",
                "status",
                f"{kind}/{item['metadata']['name']}",
                f"--timeout={timeout_s}s",
                timeout_s=timeout_s + KUBECTL_SLACK_S,
            )
    release.kubectl(
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        f"--timeout={timeout_s}s",
        timeout_s=timeout_s + KUBECTL_SLACK_S,
    )


def tiny_paraformer() -> Path:
    """The folder of the tiny Paraformer that fills the models claim.

    It is earshot's cached tiny model (``paraformer.cached_tiny_paraformer`` under the cache
    directory earshot's settings name), built there first when missing: nothing else has to have
    run before the cluster tests.
    """
    files = paraformer.cached_tiny_paraformer(Settings().cache_dir)
    return files.tokens.parent


def _provide_volumes(cluster: Cluster, namespace: str) -> None:
    """hostPath PersistentVolumes for the models (pre-filled) and MariaDB's data."""
    volumes = cluster.folder / "volumes" / namespace
    models = volumes / "models"
    shutil.copytree(tiny_paraformer(), models / "paraformer")
    mysql = volumes / "mysql"
    mysql.mkdir(parents=True)
    mysql.chmod(0o777)  # MariaDB runs as uid 999
    for path in (models, models / "paraformer"):
        path.chmod(0o755)
    claims: list[dict[str, Any]] = [
        _volume(f"{namespace}-models", models, "1Gi", claim=(namespace, MODELS_CLAIM)),
        _volume(f"{namespace}-mysql", mysql, "2Gi", claim=None),
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": MODELS_CLAIM, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": f"{namespace}-models",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    for manifest in claims:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def _volume(name: str, path: Path, size: str, *, claim: tuple[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capacity": {"storage": size},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "hostPath": {"path": str(path), "type": "Directory"},
    }
    if claim is not None:
        spec["claimRef"] = {"namespace": claim[0], "name": claim[1]}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": spec,
    }


def run_client(
    cluster: Cluster, url: str, *args: str, timeout_s: float = 300.0
) -> list[dict[str, Any]]:
    """Run tests/cluster/session_client.py in the node's namespace; the messages it printed."""
    done = subprocess.run(
        cluster.exec_inside(client_argv(url, *args)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 and not lines:
        raise ClusterError(f"session client failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return lines


def client_argv(url: str, *args: str) -> list[str]:
    """The command line of the session client (this interpreter, the repository on its path)."""
    return [
        "env",
        f"PYTHONPATH={REPO}:{REPO / 'services'}:{REPO / 'operator'}",
        sys.executable,
        "-m",
        "tests.cluster.session_client",
        url,
        *args,
    ]
