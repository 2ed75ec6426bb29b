"""One licence everywhere: the LICENSE file, the package, the chart, the Talk app and every image."""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.chart.charts import CHART, REPO

SPDX = "Apache-2.0"
DOCKERFILES = [
    REPO / "services" / "Dockerfile",
    REPO / "operator" / "Dockerfile",
    REPO / "model-repo" / "Dockerfile",
]


def test_the_licence_file_is_the_apache_licence_2_0() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_package_the_chart_and_the_talk_app_name_the_same_licence() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    info = ET.parse(REPO / "services" / "appinfo" / "info.xml").getroot()
    assert project["license"] == {"text": SPDX}
    assert chart["annotations"]["artifacthub.io/license"] == SPDX
    assert [node.text for node in info.iter("licence")] == [SPDX]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_every_final_image_stage_carries_the_licence_label(dockerfile: Path) -> None:
    stages = re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[1:]
    # a stage that others build on or copy from (AS build, wheels-*) is not shipped
    shipped = [stage for stage in stages if not re.match(r"\S+ AS (build|wheels-\w+)\b", stage)]
    assert shipped
    for stage in shipped:
        inherited = re.match(r"(runtime) AS ", stage)
        assert inherited or f'org.opencontainers.image.licenses="{SPDX}"' in stage, stage[:60]
