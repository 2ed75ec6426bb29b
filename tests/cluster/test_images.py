"""The images built here start their entry commands as the chart runs them, without a cluster.

Each image archive that :func:`tests.cluster.images.build_images` returns (what the cluster loads)
is run once with runc under the chart's confinement: its uid, a read-only root filesystem, no
capabilities, and writable memory-backed folders only where the chart mounts a volume. The servers
are started with the chart's arguments and must pass the chart's readiness checks from inside.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from earshot.engines import tiny_paraformer
from tests.cluster import harness, images, oneshot
from tests.e2e.controlplane.cluster import build_binaries

pytestmark = pytest.mark.cluster

CHART_TMP = ("/tmp",)  # the emptyDir the chart mounts at /tmp in every earshot pod


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Every image the chart needs, built once (or taken from the cache)."""
    for tool in ("buildah", "runc", "debootstrap", "ip"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install buildah runc debootstrap"
    return images.build_images(progress=print)


def _reference(spec_name: str) -> str:
    (spec,) = [s for s in images.chart_images() if s.name == spec_name]
    return spec.reference(images.app_version())


def _http_probe(python: str, url_expression: str) -> list[str]:
    """A command that succeeds when the URL answers 2xx (what an httpGet probe checks)."""
    code = f"import os, urllib.request as u; u.urlopen({url_expression}, timeout=2)"
    return [python, "-c", code]


def _repo_tags(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest: list[dict[str, list[str]]] = json.load(member)
    return [tag for entry in manifest for tag in entry["RepoTags"]]


def test_every_image_the_chart_runs_is_an_archive_tagged_with_the_charts_app_version(
    built: dict[str, Path],
) -> None:
    version = images.app_version()
    values = images.local_values()
    wanted = {
        f"{values['image']['repository']}:{version}",
        f"{values['operator']['image']['repository']}:{version}",
        f"{values['triton']['cpu']['image']['repository']}:{version}",
        images.REDIS_IMAGE,
        images.MARIADB_IMAGE,
    }
    assert set(built) == wanted
    assert (
        "ghcr.io/earshot-dev/earshot:0.1.0" in built
    )  # the name the operator's settings default to
    for reference, archive in built.items():
        assert _repo_tags(archive) == [reference]


def test_a_second_build_with_nothing_changed_reuses_every_archive(built: dict[str, Path]) -> None:
    started = time.monotonic()
    again = images.build_all(images.chart_images() + images.standin_images(), progress=print)
    assert {b.reference: b.archive for b in again} == built
    assert all(b.cached for b in again), [b.reference for b in again if not b.cached]
    print(f"warm build of every image: {time.monotonic() - started:.1f} s")


def test_the_services_image_runs_earshot_as_uid_10001_on_a_read_only_root(
    built: dict[str, Path],
) -> None:
    archive = built[_reference("earshot")]
    assert oneshot.entry_command(archive) == ["earshot", "serve"]
    how = oneshot.Confinement(uid=10001, gid=10001, writable=CHART_TMP)
    for role in ("serve", "persister", "talk"):
        done = oneshot.run(archive, ["earshot", role, "--help"], how, timeout=120)
        assert done.returncode == 0, done.output
        assert "Usage: earshot" in done.output, done.output
    whoami = oneshot.run(archive, ["sh", "-c", "id -u; touch /opt/x"], how, timeout=60)
    assert whoami.output.startswith("10001\n"), whoami.output
    assert "Read-only file system" in whoami.output, whoami.output


def test_the_services_image_entry_command_serves_health_with_the_embedded_defaults(
    built: dict[str, Path],
) -> None:
    archive = built[_reference("earshot")]
    # no model in the image: a server without one refuses to start unless asked for the demo model
    how = oneshot.Confinement(
        uid=10001, gid=10001, writable=CHART_TMP, env={"EARSHOT_DEMO_MODEL": "true"}
    )
    # the image's own health check (services/Dockerfile HEALTHCHECK)
    probe = _http_probe("python", "os.environ['EARSHOT_HEALTH_URL']")
    server = oneshot.entry_command(archive)
    done = oneshot.run(archive, oneshot.serve_and_probe(server, probe), how, timeout=240)
    assert done.returncode == 0, done.output
    assert "probe passed" in done.output


def test_the_persister_role_serves_health_with_the_embedded_defaults(
    built: dict[str, Path],
) -> None:
    archive = built[_reference("earshot")]
    # what the operator's persister container probes (dataplane.PERSISTER_HEALTH_PATH on :8001)
    how = oneshot.Confinement(
        uid=10001, gid=10001, writable=CHART_TMP,
        env={"EARSHOT_HEALTH_URL": "http://127.0.0.1:8001/health"},
    )  # fmt: skip
    probe = _http_probe("python", "os.environ['EARSHOT_HEALTH_URL']")
    server = ["earshot", "persister"]
    done = oneshot.run(archive, oneshot.serve_and_probe(server, probe), how, timeout=240)
    assert done.returncode == 0, done.output
    assert "probe passed" in done.output


def test_the_operator_image_entry_command_starts_and_asks_for_cluster_credentials(
    built: dict[str, Path],
) -> None:
    # Everything is imported and the settings are read; with no service account token mounted and
    # no kubeconfig it stops with kopf's precise error (in a pod the token is there).
    archive = built[_reference("earshot-operator")]
    assert oneshot.entry_command(archive) == ["python", "-m", "earshot_operator"]
    how = oneshot.Confinement(uid=10001, gid=10001, writable=CHART_TMP)
    done = oneshot.run(archive, None, how, timeout=120)
    assert done.returncode == 1, done.output
    assert "LoginError: no service account token and no kubeconfig" in done.output, done.output


def test_the_triton_cpu_image_loads_the_paraformer_model_as_the_chart_starts_it(
    built: dict[str, Path], tmp_path: Path
) -> None:
    archive = built[_reference("earshot-triton-cpu")]
    model = tmp_path / "paraformer"
    tiny_paraformer.build_tiny_paraformer(model)
    model.chmod(0o755)
    how = oneshot.Confinement(
        uid=1000, gid=1000, writable=("/tmp",), binds={"/models/paraformer": model}
    )
    # the chart's arguments (charts/earshot/templates/triton/pools.yaml) and readiness probe
    server = [
        "tritonserver", "--model-repository=/opt/earshot/model-repo",
        "--model-control-mode=explicit", "--load-model=paraformer_streaming",
        "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
        "--allow-metrics=true", "--allow-gpu-metrics=false",
    ]  # fmt: skip
    probe = _http_probe("python3", "'http://127.0.0.1:8000/v2/models/paraformer_streaming/ready'")
    done = oneshot.run(archive, oneshot.serve_and_probe(server, probe), how, timeout=300)
    assert done.returncode == 0, done.output
    assert "successfully loaded 'paraformer_streaming'" in done.output, done.output


def test_the_pause_image_is_the_static_pause_of_kubernetes(tmp_path: Path) -> None:
    # the one pause image: the binary build.sh compiles with the Kubernetes binaries
    archive = harness.pause_archive(build_binaries() / "pause", tmp_path)
    assert _repo_tags(archive) == [harness.PAUSE_IMAGE]
    assert oneshot.entry_command(archive) == ["/pause"]
    how = oneshot.Confinement(uid=65535, gid=65535)
    done = oneshot.run(archive, ["/pause", "-v"], how, timeout=30)
    assert done.returncode == 0, done.output
    assert done.output.strip().startswith("pause.c "), done.output
    assert "1.20.2" in done.output, done.output


def test_the_redis_stand_in_answers_the_charts_probe_with_the_charts_arguments(
    built: dict[str, Path],
) -> None:
    archive = built[images.REDIS_IMAGE]
    how = oneshot.Confinement(uid=999, gid=999, writable=("/data",))
    # charts/earshot/templates/storage/redis.yaml: args after the image's entrypoint, probe
    server = [*oneshot.entry_command(archive), "--save", "", "--appendonly", "no", "--dir", "/data"]
    probe = ["sh", "-c", 'test "$(redis-cli ping)" = PONG']
    done = oneshot.run(archive, oneshot.serve_and_probe(server, probe), how, timeout=60)
    assert done.returncode == 0, done.output


def test_the_mariadb_stand_in_creates_the_charts_database_and_user(built: dict[str, Path]) -> None:
    archive = built[images.MARIADB_IMAGE]
    how = oneshot.Confinement(
        uid=999, gid=999, writable=("/var/lib/mysql", "/run/mysqld", "/tmp"),
        env={"MARIADB_DATABASE": "earshot", "MARIADB_USER": "earshot",
             "MARIADB_PASSWORD": "it's \"quoted\"", "MARIADB_ROOT_PASSWORD": "root pw"},
    )  # fmt: skip
    # the chart's readiness probe, then what earshot does with its user
    probe = ["sh", "-c", "healthcheck.sh --connect --innodb_initialized && mariadb --protocol=tcp "
             "-h127.0.0.1 -uearshot -p\"$MARIADB_PASSWORD\" earshot -e 'CREATE TABLE t (i INT)'"]  # fmt: skip
    done = oneshot.run(
        archive, oneshot.serve_and_probe(oneshot.entry_command(archive), probe), how, timeout=180
    )
    assert done.returncode == 0, done.output


def test_the_mariadb_health_check_refuses_a_check_it_does_not_make(built: dict[str, Path]) -> None:
    archive = built[images.MARIADB_IMAGE]
    how = oneshot.Confinement(uid=999, gid=999)
    done = oneshot.run(archive, ["healthcheck.sh", "--galera_online"], how, timeout=30)
    assert done.returncode == 2
    assert "unsupported check --galera_online" in done.output
