"""``make minimums``: install every lower bound pyproject declares and run the unit tests on them.

A floor such as ``websockets>=13`` is a promise that the code works with 13.0; nothing checks it
while the development venv holds the newest releases. This installs each direct dependency of the
data plane's and the operator's extras at exactly its floor (``==13.0``), into a venv of its own,
lets pip pick the transitive dependencies, and runs tests/unit there. The Kyutai extra is left
out (its torch is pinned exactly, and moshi is installed without its dependencies:
tests/kyutai_setup.sh), and so are the unit tests that import it.

Usage: python -m tests.minimums [--venv .venv-minimums]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROJECT = "earshot"
#: The extras whose floors are installed (every one but kyutai and the shipping tools).
EXTRAS = ("audio", "gateway", "paraformer", "persister", "talk", "operator", "triton")
#: Test runners from the dev extra, at their floors too.
TEST_TOOLS = ("pytest", "pytest-asyncio")
#: Unit test modules that need the kyutai extra, or that check the development venv itself.
LEFT_OUT = (
    "test_kyutai_",
    "test_bench_figures",  # the Kyutai benchmarks import torch
    "test_decoding_clock",
    "test_frame_gathering",
    "test_session_language",
    "test_dependencies",
)
#: Single tests that need the kyutai extra.
DESELECTED = (
    "tests/unit/test_engine_loading.py::test_engine_setting_opens_that_in_process_engine[kyutai-24000]",
    "tests/unit/test_engine_settings.py::test_the_kyutai_slots_reach_the_in_process_kyutai_opened_by_name",
)


def requirements(project: Mapping[str, Any], extras: Iterable[str]) -> list[Requirement]:
    """The base dependencies and those of ``extras``, without the project's own self-references."""
    optional = project.get("optional-dependencies") or {}
    texts = list(project.get("dependencies") or ())
    for extra in extras:
        texts += optional[extra]
    found = [Requirement(text) for text in texts]
    return [req for req in found if req.name != PROJECT]


def floor_pins(found: Iterable[Requirement]) -> list[str]:
    """``name[extras]==floor`` for each requirement (the highest floor where one is named twice).

    Raises:
        ValueError: a requirement with no lower bound (a floor must be declared).
    """
    floors: dict[str, tuple[Version, str]] = {}
    for req in found:
        bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if not bounds:
            raise ValueError(f"{req} declares no lower bound")
        floor = max(bounds)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        name = req.name.lower()
        if name not in floors or floor > floors[name][0]:
            floors[name] = (floor, f"{req.name}{extras}=={floor}")
    return sorted(pin for _, pin in floors.values())


def _run(argv: Sequence[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, cwd=REPO)


def main() -> int:
    """Build the venv and run the unit tests; the exit status is pytest's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-minimums")
    args = parser.parse_args()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = [req for req in requirements(project, ("dev",)) if req.name in TEST_TOOLS]
    pins = floor_pins([*requirements(project, EXTRAS), *dev])
    python = args.venv / "bin" / "python"
    start = time.monotonic()
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(args.venv)])
    _run([str(python), "-m", "pip", "install", "--quiet", *pins])
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", "."])
    installed = time.monotonic() - start
    ignores = [
        f"--ignore={path.relative_to(REPO)}"
        for path in sorted((REPO / "tests" / "unit").glob("test_*.py"))
        if path.name.startswith(LEFT_OUT)
    ] + [f"--deselect={test}" for test in DESELECTED]
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit", *ignores],
        cwd=REPO,
        check=False,
    )
    print("\nfloors installed: " + " ".join(pins))
    print(f"install {installed:.0f} s, unit tests {time.monotonic() - start - installed:.0f} s")
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
