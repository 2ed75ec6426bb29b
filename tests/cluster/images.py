"""earshot's container images, built here with buildah from the repository's own Dockerfiles.

No registry can be reached from these machines (../shared/CLUSTER.md), so the bases are made here:

* ``base_image.sh``: Debian bookworm from debootstrap, as ``localhost/earshot-base/debian`` and,
  with a virtual environment at ``/usr/local``, ``localhost/earshot-base/python`` (passed as the
  services and operator Dockerfiles' ``PYTHON_IMAGE``);
* ``triton-base.Containerfile``: a stand-in for the NGC tritonserver image carrying the
  ``tritonserver`` of the nvidia-pytriton wheel (passed as model-repo/Dockerfile's ``TRITON_IMAGE``).

The pod sandbox ("pause") image is not made here: tests/cluster/harness.py makes it from the pause
binary tests/e2e/controlplane/build.sh compiles with the Kubernetes binaries (one build of it).

Every image is tagged with the chart's appVersion under the repository its values name, and kept as
a ``docker-archive`` (what ``ctr images import`` loads) under ``~/.cache/earshot/images``, keyed on
a hash of everything its build reads (Dockerfile, the files it copies, the base's key): a second
run with nothing changed builds nothing.

``python -m tests.cluster.images`` builds what the cluster tests need (:func:`build_images`) and
prints each archive and how long it took; ``--release`` (``make images``) builds every image of
docs/operations.md's table and leaves them in buildah's storage to push.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parents[2]
HERE: Final = Path(__file__).resolve().parent
BASE_SCRIPT: Final = HERE / "base_image.sh"
TRITON_BASE_FILE: Final = HERE / "triton-base.Containerfile"
STANDINS: Final = HERE / "standins"
DEBIAN_BASE: Final = "localhost/earshot-base/debian:bookworm"
PYTHON_BASE: Final = "localhost/earshot-base/python:3.11-bookworm"
TRITON_BASE: Final = "localhost/earshot-base/tritonserver:pytriton-0.7.0"
REDIS_IMAGE: Final = "localhost/earshot-test/redis:bookworm"
"""Stand-in for the chart's evaluation Redis image (Debian's redis-server)."""
MARIADB_IMAGE: Final = "localhost/earshot-test/mariadb:bookworm"
"""Stand-in for the chart's evaluation MariaDB image (Debian's mariadb-server)."""
_BASE_KEY_ANNOTATION = "earshot.base-key"
# Never part of an image (also in .dockerignore, which buildah honours): byte code of test runs.
_IGNORED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache"}
_IGNORED_SUFFIXES = (".pyc", ".pyo")
_BUILD_TIMEOUT_S = 60 * 60  # a cold Triton image on a busy 2-core machine
# Archives kept per image: each change of a copied file makes a new one (hundreds of MB). A build or
# reuse marks its archive used; one used within the grace period is kept (a test session of another
# checkout may be about to load it).
_ARCHIVES_KEPT = 3
_ARCHIVE_GRACE_S = 3600

Progress = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the log to read."""


def cache_dir() -> Path:
    """Where base root filesystems, image archives and build logs are kept between runs."""
    configured = os.environ.get("EARSHOT_IMAGES_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "earshot" / "images"


def _load_yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def app_version() -> str:
    """The chart's appVersion: the tag of every earshot image."""
    return str(_load_yaml(REPO / "charts" / "earshot" / "Chart.yaml")["appVersion"])


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One image to build from one of the repository's Dockerfiles."""

    name: str
    repository: str
    dockerfile: Path
    target: str | None
    base_arg: str
    base: str = "python"  # python, triton or debian: which base the base_arg names
    context: Path = REPO
    tag: str = ""  # default: the chart's appVersion

    def reference(self, tag: str) -> str:
        """``repository:tag`` (the spec's own tag, if it has one)."""
        return f"{self.repository}:{self.tag or tag}"


def chart_images() -> list[ImageSpec]:
    """The images the chart's values name (repositories read from values.yaml)."""
    values = _load_yaml(REPO / "charts" / "earshot" / "values.yaml")
    return [
        ImageSpec("earshot", values["image"]["repository"], REPO / "services" / "Dockerfile",
                  "g711", "PYTHON_IMAGE"),
        ImageSpec("earshot-operator", values["operator"]["image"]["repository"],
                  REPO / "operator" / "Dockerfile", None, "PYTHON_IMAGE"),
        ImageSpec("earshot-triton-cpu", values["triton"]["cpu"]["image"]["repository"],
                  REPO / "model-repo" / "Dockerfile", "cpu", "TRITON_IMAGE", "triton"),
    ]  # fmt: skip


def standin_images() -> list[ImageSpec]:
    """Stand-ins for the third-party images of the chart's evaluation storage (Redis, MariaDB)."""
    return [
        ImageSpec(f"standin-{name}", reference.rsplit(":", 1)[0], STANDINS / f"{name}.Containerfile",
                  None, "BASE_IMAGE", "debian", STANDINS, reference.rsplit(":", 1)[1])
        for name, reference in (("redis", REDIS_IMAGE), ("mariadb", MARIADB_IMAGE))
    ]  # fmt: skip


def local_values() -> dict[str, Any]:
    """Helm values that run the chart's default install on the images built here (never pulled)."""
    tag = app_version()

    def image(reference: str) -> dict[str, str]:
        repository, image_tag = reference.rsplit(":", 1)
        return {"repository": repository, "tag": image_tag, "pullPolicy": "Never"}

    services, operator, triton_cpu = (spec.reference(tag) for spec in chart_images())
    return {
        "image": image(services),
        "operator": {"image": image(operator)},
        "triton": {"cpu": {"image": image(triton_cpu)}},
        "redis": {"image": image(REDIS_IMAGE)},
        "mysql": {"image": image(MARIADB_IMAGE)},
    }


def release_images(*, gpu: bool) -> list[ImageSpec]:
    """Every image of docs/operations.md's table; the GPU pool only when ``gpu`` (it needs CUDA)."""
    values = _load_yaml(REPO / "charts" / "earshot" / "values.yaml")
    services = chart_images()[0]
    extra = [
        ImageSpec("earshot-talk", f"{services.repository}-talk", services.dockerfile, "talk",
                  "PYTHON_IMAGE"),
    ]  # fmt: skip
    if gpu:
        extra.append(
            ImageSpec("earshot-triton-gpu", values["triton"]["gpu"]["image"]["repository"],
                      REPO / "model-repo" / "Dockerfile", "gpu", "TRITON_IMAGE", "triton")
        )  # fmt: skip
    return chart_images() + extra


@dataclass(frozen=True, slots=True)
class Built:
    """An image archive and how it was obtained."""

    reference: str
    archive: Path
    seconds: float
    cached: bool


@dataclass(frozen=True, slots=True)
class Bases:
    """The base images passed to the Dockerfiles and the keys their archives are cached on."""

    python: str
    python_key: str
    triton: str = ""
    triton_key: str = ""
    external: bool = False

    def for_spec(self, spec: ImageSpec) -> tuple[str, str]:
        """The base image ``spec`` is built on and the key of its content."""
        if spec.base == "triton":
            return self.triton, self.triton_key
        if spec.base == "debian":
            return DEBIAN_BASE, self.python_key  # made by the same run of base_image.sh
        return self.python, self.python_key


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:16]


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths a Dockerfile's ``COPY`` instructions read (not ``COPY --from``)."""
    sources: list[str] = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        arguments = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources.extend(arguments[:-1])
    return sources


def _tree_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if _IGNORED_PARTS & set(relative.parts) or path.name.endswith(_IGNORED_SUFFIXES):
            continue
        if path.is_file():
            yield path


def context_key(dockerfile: Path, context: Path, *extra: str) -> str:
    """A hash of the Dockerfile, every file its ``COPY`` reads from ``context``, and ``extra``."""
    parts = [dockerfile.read_bytes(), *(e.encode() for e in extra)]
    for source in copy_sources(dockerfile):
        root = context / source
        if not root.exists():
            raise ImageBuildError(f"{dockerfile}: COPY {source}: not in {context}")
        for path in _tree_files(root):
            mode = "x" if os.access(path, os.X_OK) else "-"
            parts += [f"{path.relative_to(context)} {mode}".encode(), path.read_bytes()]
    return _sha256(*parts)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two test sessions building the same image at once would race on the archive.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list[str], log: Path, *, capture: bool = False) -> str:
    """Run a build step, appending its output to ``log`` (stdout returned instead if ``capture``)."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(
            command, stdout=subprocess.PIPE if capture else out, stderr=out, text=True,
            timeout=_BUILD_TIMEOUT_S,
        )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildError(
            f"{' '.join(command[:3])} failed ({done.returncode}), see {log}:\n{tail}"
        )
    return done.stdout or ""


def _require_tools() -> None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(f"{', '.join(missing)} missing: apt-get install buildah debootstrap")


def _annotation(image: str) -> str | None:
    done = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format",
         f'{{{{index .ImageAnnotations "{_BASE_KEY_ANNOTATION}"}}}}', image],
        capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def local_bases(progress: Progress, *, triton: bool) -> Bases:
    """Make (or find) the debootstrap bases and, if asked, the Triton stand-in in buildah's storage."""
    log = cache_dir() / "base.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_key = _run(["bash", str(BASE_SCRIPT)], log, capture=True).split()[-1]
    if not triton:
        return Bases(python=PYTHON_BASE, python_key=base_key)
    triton_key = _sha256(base_key.encode(), TRITON_BASE_FILE.read_bytes())
    with _locked(cache_dir() / ".triton-base.lock"):
        if _annotation(TRITON_BASE) != triton_key:
            progress(f"building {TRITON_BASE} (tritonserver of nvidia-pytriton)")
            # imported here: it pulls in earshot's engines, which only the Triton base needs
            from tests import triton_server

            install = triton_server.prepare()
            context = install.server.parents[3]  # .../pytriton-0.7.0
            _run(["buildah", "bud", "--force-rm", "--pull-never", "--network", "host", "--layers=false",
                  "-f", str(TRITON_BASE_FILE), "--build-arg", f"BASE_IMAGE={DEBIAN_BASE}",
                  "--annotation", f"{_BASE_KEY_ANNOTATION}={triton_key}",
                  "-t", TRITON_BASE, str(context)], log)  # fmt: skip
    return Bases(PYTHON_BASE, base_key, TRITON_BASE, triton_key)


def _export(reference: str, archive: Path, log: Path) -> None:
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _run(["buildah", "push", "--quiet", reference, f"docker-archive:{partial}:{reference}"], log)
    partial.rename(archive)
    prune_archives(archive)


def prune_archives(archive: Path) -> None:
    """Remove all but the newest archives (and their logs) of the image ``archive`` is one of."""
    name = archive.name.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.tar")
    same = [p for p in archive.parent.glob(f"{name}-*.tar") if pattern.fullmatch(p.name)]
    recent = time.time() - _ARCHIVE_GRACE_S
    for old in sorted(same, key=lambda p: p.stat().st_mtime, reverse=True)[_ARCHIVES_KEPT:]:
        if old.stat().st_mtime > recent:
            continue
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)


def build_image(spec: ImageSpec, bases: Bases, tag: str, progress: Progress) -> Built:
    """Build one image and export its archive, unless the archive is cached.

    Only the archive is the result: buildah's storage holds the image under its reference only until
    another build (another checkout) tags that reference; :func:`load_into_storage` restores it.
    """
    base, base_key = bases.for_spec(spec)
    key = context_key(spec.dockerfile, spec.context, spec.target or "", base, base_key, tag)
    archive = cache_dir() / f"{spec.name}-{key}.tar"
    reference = spec.reference(tag)
    started = time.monotonic()
    with _locked(cache_dir() / f".{spec.name}.lock"):
        if archive.exists():
            archive.touch()  # used: pruning keeps it
            return Built(reference, archive, time.monotonic() - started, cached=True)
        log = cache_dir() / f"{spec.name}-{key}.log"
        log.unlink(missing_ok=True)
        progress(f"building {reference} ({spec.dockerfile.relative_to(REPO)}, log {log})")
        # An external base (--python-image) may be pulled; the local ones never can be.
        _run(["buildah", "bud", "--force-rm", *([] if bases.external else ["--pull-never"]),
              "--network", "host", "--layers", "-f", str(spec.dockerfile),
              *(["--target", spec.target] if spec.target else []),
              "--build-arg", f"{spec.base_arg}={base}", "-t", reference, str(spec.context)], log)  # fmt: skip
        _export(reference, archive, log)
    return Built(reference, archive, time.monotonic() - started, cached=False)


def build_all(
    specs: list[ImageSpec], *, progress: Progress = print, bases: Bases | None = None
) -> list[Built]:
    """Build ``specs`` (tagged with the chart's appVersion), each unless cached."""
    _require_tools()
    started = time.monotonic()
    bases = bases or local_bases(progress, triton=any(spec.base == "triton" for spec in specs))
    base_seconds = time.monotonic() - started
    tag = app_version()
    built = [build_image(spec, bases, tag, progress) for spec in specs]
    progress(f"bases ready in {base_seconds:.1f} s")
    return built


def build_images(*, progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Build every image the chart's default and test values run, reusing cached archives.

    Returns:
        ``{image reference: docker-archive path}`` for the services, operator and Triton CPU pool
        images (tagged with the chart's appVersion) and the stand-ins
        :data:`REDIS_IMAGE` and :data:`MARIADB_IMAGE` (:func:`local_values` points the chart at all
        of them); load each with ``ctr -n k8s.io images import PATH``.

    Raises:
        ImageBuildError: a tool is missing or a build step failed (the message names its log).
    """
    specs = chart_images() + standin_images()
    return {b.reference: b.archive for b in build_all(specs, progress=progress)}


def main(argv: list[str]) -> int:
    """``python -m tests.cluster.images [--release] [--python-image REF] [--triton-image REF]``."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.images", description=__doc__)
    parser.add_argument(
        "--release",
        action="store_true",
        help="every image of docs/operations.md, left in buildah's storage to push",
    )
    parser.add_argument(
        "--python-image",
        default="",
        help="base of the services and operator images (default: debootstrap here)",
    )
    parser.add_argument(
        "--triton-image",
        default="",
        help="NGC tritonserver base; also builds the GPU pool (default: stand-in)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if bool(args.python_image) != bool(args.triton_image):
        parser.error("give both --python-image and --triton-image, or neither")
    bases = None
    if args.python_image:
        bases = Bases(args.python_image, "external", args.triton_image, "external", external=True)
    # without --release: what build_images() builds
    release = release_images(gpu=bool(args.triton_image))
    specs = release if args.release else chart_images() + standin_images()
    try:
        built = build_all(specs, progress=print, bases=bases)
        if args.release:
            for image in built:
                load_into_storage(image)
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for image in built:
        how = "cached" if image.cached else "built"
        print(f"{image.reference}\t{image.archive}\t{how} in {image.seconds:.1f} s")
    if args.release and not args.triton_image:
        print("not built: the GPU pool image (needs --triton-image, an NGC base with CUDA)")
    return 0


def load_into_storage(image: Built) -> None:
    """Tag the archive's image in buildah's storage (to push it), whatever the reference held."""
    _run(["buildah", "pull", "--quiet", f"docker-archive:{image.archive}"],
         cache_dir() / "restore.log")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
