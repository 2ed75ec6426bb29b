"""Dependencies stated honestly: the lock matches the tested venv, the floors are parseable
floors, and the one install that bypasses the resolver (moshi) still needs to and is covered."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests import constraints, minimums

PROJECT = tomllib.loads((constraints.REPO / "pyproject.toml").read_text())["project"]


def _locked() -> dict[str, str]:
    pins = {}
    for line in constraints.PATH.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_the_constraints_pin_every_installed_dependency_at_its_installed_version() -> None:
    installed = {name: Version(v).public for name, v in constraints.closure().items()}
    locked = _locked()
    assert set(installed) - set(locked) == set(), (
        "unpinned: run python -m tests.constraints --write"
    )
    assert {n: v for n, v in installed.items() if locked[n] != v} == {}
    assert set(locked) - set(installed) == set(), "pinned but no longer needed"


def test_every_pin_satisfies_what_pyproject_asks() -> None:
    locked = _locked()
    for req in minimums.requirements(PROJECT, tuple(PROJECT["optional-dependencies"])):
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, req
        assert req.specifier.contains(version, prereleases=True), (req, version)


def test_each_floor_becomes_an_exact_pin_and_a_missing_floor_is_refused() -> None:
    pins = minimums.floor_pins(
        [
            Requirement("websockets>=13"),
            Requirement("uvicorn[standard]>=0.29"),
            Requirement("websockets>=12"),
        ]
    )
    assert pins == ["uvicorn[standard]==0.29", "websockets==13"]
    with pytest.raises(ValueError, match="no lower bound"):
        minimums.floor_pins([Requirement("redis<6")])


def test_every_extra_the_minimums_job_installs_declares_floors() -> None:
    assert minimums.floor_pins(minimums.requirements(PROJECT, minimums.EXTRAS))


# --- moshi: installed with --no-deps (tests/kyutai_setup.sh, model-repo/Dockerfile) ---------------

MOSHI_RUNTIME = ("safetensors", "huggingface-hub", "einops", "sentencepiece")


def _moshi_requires() -> dict[str, Requirement]:  # names canonical
    found = [Requirement(text) for text in metadata.requires("moshi") or ()]
    return {canonicalize_name(r.name): r for r in found if r.marker is None or r.marker.evaluate()}


def test_moshi_still_pins_a_torch_older_than_the_one_earshot_runs() -> None:
    # the reason for --no-deps: when moshi lifts this pin, resolve it normally instead
    torch = _moshi_requires()["torch"]
    kyutai_torch = next(
        Requirement(text)
        for text in PROJECT["optional-dependencies"]["kyutai"]
        if text.startswith("torch")
    )
    [pinned] = [Version(s.version) for s in kyutai_torch.specifier]
    assert not torch.specifier.contains(pinned), f"moshi now accepts torch {pinned}: drop --no-deps"
    assert Version(metadata.version("torch")).public == str(pinned)


def test_the_kyutai_extra_brings_moshis_runtime_imports_with_moshis_own_ranges() -> None:
    ours: dict[str, Requirement] = {
        canonicalize_name(r.name): r
        for r in map(Requirement, PROJECT["optional-dependencies"]["kyutai"])
    }
    theirs = _moshi_requires()
    for name in MOSHI_RUNTIME:
        assert ours[name].specifier == theirs[name].specifier, name


# --- Triton's Python backend: the same pins, numpy<2 (model-repo/constraints.txt) ----------------


def test_the_triton_constraints_are_the_tested_pins_with_numpy_below_2() -> None:
    text = constraints.TRITON_PATH.read_text()
    assert text == constraints.render_triton(constraints.closure()), (
        "stale: run python -m tests.constraints --write"
    )
    ours = [line for line in text.splitlines() if not line.startswith("#")]
    tested = [
        line for line in constraints.PATH.read_text().splitlines() if not line.startswith("#")
    ]
    assert [a for a, b in zip(ours, tested, strict=True) if a != b] == ["numpy<2"]


def test_every_install_of_the_triton_images_uses_the_triton_constraints() -> None:
    dockerfile = (constraints.REPO / "model-repo" / "Dockerfile").read_text()
    assert "COPY model-repo/constraints.txt /tmp/constraints.txt" in dockerfile
    commands = re.split(r"\n|&&", dockerfile.replace("\\\n", " "))
    resolving = [c for c in commands if "pip wheel" in c and "--no-deps" not in c]
    assert len(resolving) == 2  # the CPU and the GPU wheel sets
    assert all("--constraint /tmp/constraints.txt" in line for line in resolving)
