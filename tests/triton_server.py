"""A real ``tritonserver`` for tests: prepared once from PyPI, started on free ports per test session.

Preparing (:func:`prepare`) costs a few minutes the first time and nothing afterwards; the result is
cached under ``~/.cache/earshot/triton`` (DESIGN.md, "Real components for tests"):

* ``nvidia-pytriton==0.7.0`` unpacked with ``pip --target``: it carries ``tritonserver`` 2.51, its
  libraries (``nvidia_pytriton.libs``, put on ``LD_LIBRARY_PATH``) and the Python backend, whose stub
  is copied next to ``libtriton_python.so`` where the backend looks for it;
* a virtual environment made with the system ``python3.11`` (the stub embeds Debian's
  ``libpython3.11``) holding earshot's engine dependencies at the releases of
  ``model-repo/constraints.txt``, with ``numpy<2`` (numpy 2 makes every tensor arrive empty). Each
  model repository gets a small overlay environment that adds the prepared packages and this
  checkout's ``services/`` (the stub ignores ``PYTHONPATH``); models find it through their
  ``EXECUTION_ENV_PATH`` parameter.

Needs Debian ``python3.11``, ``python3.11-venv`` and ``libpython3.11`` and access to a package index.
CI prepares the cache up front with ``python -m tests.triton_server prepare``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from earshot.engines.recognizers import BatchDecoder, Recognizer, Samples
from earshot.events import Recognition

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPO = REPO_ROOT / "model-repo"
#: Models only tests serve (same tensor contract as ``model-repo/``'s).
TEST_MODELS = REPO_ROOT / "tests" / "triton_models"
#: The releases the tests ran with, numpy<2 for the backend (the pool images install with it too).
BACKEND_CONSTRAINTS = MODEL_REPO / "constraints.txt"
PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
INSTALL_HINT = "apt-get install python3.11 python3.11-venv libpython3.11"
# The pin the backend needs, and what an engine needs beyond its extra of pyproject.toml: moshi pins
# torch<2.10, so it goes in without its dependencies (as in tests/kyutai_setup.sh).
_BACKEND_PINS = ("numpy<2",)
_NO_DEPS = {"kyutai": ("moshi==0.2.13",)}
ENGINES = ("paraformer", "kyutai")
_READY_TIMEOUT_SECONDS = 180.0
_EXIT_TIMEOUT_SECONDS = 5
_SHM_DIR = Path("/dev/shm")


class TritonUnavailable(RuntimeError):
    """Triton could not be prepared or did not come up; the message says why."""


def default_cache_dir() -> Path:
    """Where the prepared server and Python environment are kept between runs."""
    return Path.home() / ".cache" / "earshot" / "triton"


@dataclass(frozen=True, slots=True)
class TritonInstall:
    """A runnable tritonserver and the Python environment its Python-backend models run in."""

    server: Path
    library_dir: Path
    backend_dir: Path
    python_env: Path


def prepare(
    cache_dir: Path | None = None, *, engines: tuple[str, ...] = ("paraformer",)
) -> TritonInstall:
    """Make (or find in the cache) a runnable tritonserver and its backend Python environment.

    Args:
        cache_dir: where to keep them (default ``~/.cache/earshot/triton``).
        engines: the engines whose models the environment must run (``paraformer``, ``kyutai``);
            each set of engines gets an environment of its own (kyutai brings torch).

    Raises:
        TritonUnavailable: a system package is missing or an install step failed.
    """
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        install = _prepare_server(cache / "pytriton-0.7.0")
        python_env = _prepare_python_env(cache, engines)
    return TritonInstall(
        server=install / "pytriton" / "tritonserver" / "bin" / "tritonserver",
        library_dir=install / "nvidia_pytriton.libs",
        backend_dir=install / "pytriton" / "tritonserver" / "backends",
        python_env=python_env,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two test runs preparing the same cache at once would corrupt it.
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prepare_server(target: Path) -> Path:
    stamp = target / ".prepared"
    if stamp.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
          "--target", str(target), PYTRITON_REQUIREMENT])  # fmt: skip
    tritonserver = target / "pytriton" / "tritonserver"
    stub = tritonserver / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    shutil.copy2(stub, tritonserver / "backends" / "python" / stub.name)
    _check_linkage(
        tritonserver / "backends" / "python" / stub.name, target / "nvidia_pytriton.libs"
    )
    stamp.write_text(PYTRITON_REQUIREMENT + "\n")
    return target


def _check_linkage(binary: Path, library_dir: Path) -> None:
    env = {**os.environ, "LD_LIBRARY_PATH": str(library_dir)}
    linked = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True)
    missing = [line.strip() for line in linked.stdout.splitlines() if "not found" in line]
    if missing:
        raise TritonUnavailable(f"{binary.name} lacks {', '.join(missing)}: {INSTALL_HINT}")


def backend_requirements(engines: tuple[str, ...]) -> list[str]:
    """The engine dependencies the models import, read from pyproject.toml, with the backend's pins."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    wanted: list[str] = list(project["dependencies"])
    pending = list(engines)
    while pending:
        for requirement in extras[pending.pop()]:
            nested = re.fullmatch(r"earshot\[([\w,-]+)\]", requirement)
            if nested:
                pending.extend(nested.group(1).split(","))
            else:
                wanted.append(requirement)
    return sorted(set(wanted)) + list(_BACKEND_PINS)


def _prepare_python_env(cache: Path, engines: tuple[str, ...]) -> Path:
    requirements = backend_requirements(engines)
    no_deps = [r for engine in engines for r in _NO_DEPS.get(engine, ())]
    pins = BACKEND_CONSTRAINTS.read_text()  # a changed pin makes a new environment
    key = hashlib.sha256("\n".join([*requirements, *no_deps, pins]).encode()).hexdigest()[:12]
    env = cache / f"python-env-{key}"
    if (env / ".prepared").exists():
        return env
    if not SYSTEM_PYTHON.exists():
        raise TritonUnavailable(f"{SYSTEM_PYTHON} is missing: {INSTALL_HINT}")
    shutil.rmtree(env, ignore_errors=True)
    _run([str(SYSTEM_PYTHON), "-m", "venv", str(env)])
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet",
          "--constraint", str(BACKEND_CONSTRAINTS), *requirements])  # fmt: skip
    if no_deps:
        _run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", *no_deps]
        )
    (env / ".prepared").write_text("\n".join(requirements) + "\n")
    return env


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TritonUnavailable(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
            f"{done.stderr[-4000:]}"
        )


def with_parameters(config: str, parameters: Mapping[str, str]) -> str:
    """A ``config.pbtxt`` text whose string ``parameters`` hold the given values (added or replaced)."""
    for key, value in parameters.items():
        config = re.sub(
            r'parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{[^}]*\}\s*\}\n?',
            "",
            config,
        )
        config += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return config


def with_idle_timeout(config: str, microseconds: int) -> str:
    """A ``config.pbtxt`` text with another ``max_sequence_idle_microseconds``."""
    return re.sub(
        r"max_sequence_idle_microseconds:\s*\d+",
        f"max_sequence_idle_microseconds: {microseconds}",
        config,
    )


def with_queue_delay(config: str, microseconds: int) -> str:
    """A ``config.pbtxt`` text with another ``max_queue_delay_microseconds``."""
    return re.sub(
        r"max_queue_delay_microseconds:\s*\d+",
        f"max_queue_delay_microseconds: {microseconds}",
        config,
    )


def with_instance_count(config: str, count: int) -> str:
    """A ``config.pbtxt`` text whose instance group runs ``count`` instances."""
    changed, n = re.subn(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+", rf"\g<1>{count}", config)
    if n != 1:
        raise ValueError("the config has no single instance_group with a count to change")
    return changed


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model to serve: a folder of ``model-repo/`` (or ``root``) under a name, with changed
    parameters."""

    source: str
    parameters: Mapping[str, str]
    name: str = ""
    idle_timeout_microseconds: int | None = None
    queue_delay_microseconds: int | None = None
    instances: int | None = None
    root: Path = MODEL_REPO

    @property
    def served_name(self) -> str:
        """The name the model is served under."""
        return self.name or self.source


def overlay_environment(target: Path, install: TritonInstall) -> Path:
    """A virtual environment that sees the prepared packages and this checkout's earshot.

    The backend stub ignores ``PYTHONPATH``, and the prepared environment is shared by every
    checkout, so earshot reaches the models through a ``.pth`` file of an environment of its own.
    """
    if not (target / "bin" / "activate").exists():
        _run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(target)])
    (site_packages,) = (target / "lib").glob("python3*/site-packages")
    (prepared,) = (install.python_env / "lib").glob("python3*/site-packages")
    (site_packages / "earshot-checkout.pth").write_text(
        f"{REPO_ROOT / 'services'}\nimport site; site.addsitedir({str(prepared)!r})\n"
    )
    return target


def build_model_repository(target: Path, install: TritonInstall, models: list[ModelSpec]) -> Path:
    """Copy models of ``model-repo/`` into ``target``, pointed at an overlay environment.

    Returns:
        ``target``, ready for ``--model-repository``.
    """
    python_env = overlay_environment(target.parent / f"{target.name}-python", install)
    for spec in models:
        folder = target / spec.served_name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(
            spec.root / spec.source, folder, ignore=shutil.ignore_patterns("__pycache__")
        )
        parameters = {"EXECUTION_ENV_PATH": str(python_env), **spec.parameters}
        # config.pbtxt and the variants in configs/ (picked with --model-config-name)
        for path in [folder / "config.pbtxt", *folder.glob("configs/*.pbtxt")]:
            config = path.read_text()
            config = re.sub(r'^name:\s*"[^"]*"', f'name: "{spec.served_name}"', config, flags=re.M)
            if spec.idle_timeout_microseconds is not None:
                config = with_idle_timeout(config, spec.idle_timeout_microseconds)
            if spec.queue_delay_microseconds is not None:
                config = with_queue_delay(config, spec.queue_delay_microseconds)
            if spec.instances is not None:
                config = with_instance_count(config, spec.instances)
            path.write_text(with_parameters(config, parameters))
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    workdir: Path,
    models: list[ModelSpec],
    *,
    engines: tuple[str, ...] = ("paraformer",),
    config_name: str | None = None,
) -> Iterator[TritonServer]:
    """A running tritonserver serving ``models`` for a test module, stopped afterwards.

    A test that needs it fails, never skips, when Triton cannot be prepared or does not come up.
    """
    import pytest  # the test suite's, not the ``python -m tests.triton_server`` command's

    try:
        install = prepare(engines=engines)
        repository = build_model_repository(workdir / "models", install, models)
        server = TritonServer(install, repository, workdir, config_name=config_name).start()
    except TritonUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


class TritonServer:
    """A tritonserver process on 127.0.0.1, restartable on the same ports, logging to a file."""

    def __init__(
        self,
        install: TritonInstall,
        model_repository: Path,
        workdir: Path,
        *,
        config_name: str | None = None,
    ) -> None:
        """Prepare a server on free ports; call :meth:`start`.

        Args:
            install: what :func:`prepare` made.
            model_repository: what :func:`build_model_repository` made.
            workdir: where the log goes.
            config_name: serve the models' ``configs/<name>.pbtxt`` where they have one
                (``cpu``: the CPU variant of a GPU model).
        """
        self.install = install
        self.config_name = config_name
        self.model_repository = model_repository
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint of the server."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        """The server's process id, also its process group (the backend stubs are in it)."""
        if self._process is None:
            raise TritonUnavailable("tritonserver is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        return [
            str(self.install.server),
            "--model-repository", str(self.model_repository),
            "--backend-directory", str(self.install.backend_dir),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--allow-gpu-metrics", "false",
            "--exit-timeout-secs", str(_EXIT_TIMEOUT_SECONDS),
            *(["--model-config-name", self.config_name] if self.config_name else []),
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.install.library_dir)}

    def start(self) -> Self:
        """Start the server (a no-op when it runs) and wait until it reports READY."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(), env=self._environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not self.ready():
            if self._process.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(hard=True)
                raise TritonUnavailable(f"tritonserver was not READY in time:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def ready(self) -> bool:
        """Whether the server answers READY on its HTTP health endpoint."""
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, hard: bool = False) -> None:
        """Stop the server and its backend stubs: SIGTERM and wait, or SIGKILL (a crash) when ``hard``."""
        process, self._process = self._process, None
        if process is None:
            return
        regions = _shm_regions_of_group(process.pid)
        if process.poll() is None:
            # A clean stop lets the server stop its stubs; a crash takes them down at once.
            with contextlib.suppress(ProcessLookupError):
                if hard:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.terminate()
            try:
                process.wait(timeout=_EXIT_TIMEOUT_SECONDS + 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The stubs are in the server's process group; a killed server leaves them (and their
        # shared memory) behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for region in regions:
            (_SHM_DIR / region).unlink(missing_ok=True)

    def restart(self, *, hard: bool = True) -> Self:
        """Stop (by default: kill) the server and start it again on the same ports."""
        self.stop(hard=hard)
        return self.start()

    def metrics(self) -> str:
        """The text of the server's Prometheus endpoint."""
        with urllib.request.urlopen(self.metrics_url, timeout=5.0) as reply:
            text: str = reply.read().decode()
            return text

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _shm_regions_of_group(group: int) -> set[str]:
    # Each backend stub is told its shared-memory region on its command line.
    regions: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(proc.name)) != group:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            regions |= {
                a.decode() for a in argv if a.startswith(b"triton_python_backend_shm_region_")
            }
    return regions


def metric_total(metrics_text: str, name: str, *, model: str) -> float:
    """The sum of a Triton metric's samples for one model (all versions)."""
    pattern = re.compile(
        rf'^{re.escape(name)}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$', re.M
    )
    return sum(float(value) for value in pattern.findall(metrics_text))


def in_process(decoder: BatchDecoder[Any], pieces: Sequence[Samples]) -> list[Recognition]:
    """What an in-process decoder says about audio fed chunk by chunk, then finished."""
    stream = decoder.open()
    said: list[Recognition] = []
    for piece in pieces:
        decoder.accept(stream, piece)
        said.extend(decoder.decode([stream])[0])
    decoder.finish(stream)
    said.extend(decoder.decode([stream])[0])
    return said


def thinned(said: Sequence[Recognition], expected: Sequence[Recognition]) -> bool:
    """Whether ``said`` is ``expected`` less some partials, every final kept in order.

    What a clocked stream is told when its client fell behind real time (earshot.engines.clocking:
    a late stream's early answers carry its finals but no partial); exactly ``expected`` otherwise.
    """
    at = 0
    for recognition in said:
        while at < len(expected) and expected[at] != recognition:
            if expected[at].is_final:
                return False
            at += 1
        if at == len(expected):
            return False
        at += 1
    return not any(r.is_final for r in expected[at:])


async def recognised(
    recognizer: Recognizer, pieces: Sequence[Samples], *, pause_after: int = -1, pause: float = 0
) -> list[Recognition]:
    """What a recogniser says about audio sent chunk by chunk (pausing once if asked), then finished."""
    stream = recognizer.open_stream()
    said: list[Recognition] = []
    try:
        for i, piece in enumerate(pieces):
            said.extend(await stream.accept(piece))
            if i == pause_after:
                await asyncio.sleep(pause)
    finally:
        said.extend(await stream.finish())
    return said


def main(argv: list[str]) -> int:
    """``python -m tests.triton_server prepare [ENGINE...]``: fill the cache (CI, before the tests).

    Without engines it prepares the environments the integration tests use: paraformer alone, and
    paraformer with kyutai.
    """
    if not argv or argv[0] != "prepare" or not set(argv[1:]) <= set(ENGINES):
        print(
            f"usage: python -m tests.triton_server prepare [{'|'.join(ENGINES)}...]",
            file=sys.stderr,
        )
        return 2
    for engines in [tuple(argv[1:])] if argv[1:] else [("paraformer",), ENGINES]:
        install = prepare(engines=engines)
        print(f"tritonserver: {install.server}\n{'+'.join(engines)}: {install.python_env}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
