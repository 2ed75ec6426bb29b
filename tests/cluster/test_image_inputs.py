"""What the image builds read and what they give the chart, checked without building anything."""

from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # via kubernetes-validate (ship extra)
import yaml

from tests.cluster import images

CHART = images.REPO / "charts" / "earshot"


def test_the_cache_key_changes_with_a_file_the_dockerfile_copies(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "__pycache__").mkdir()
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM base AS build\nCOPY app /app\nCOPY --from=build /app /x\n")
    first = images.context_key(dockerfile, tmp_path)
    (tmp_path / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    assert images.context_key(dockerfile, tmp_path) == first  # byte code never reaches an image
    (tmp_path / "app" / "main.py").write_text("print(2)\n")
    assert images.context_key(dockerfile, tmp_path) != first


def test_the_copy_sources_of_the_services_dockerfile_are_what_its_build_reads() -> None:
    sources = images.copy_sources(images.REPO / "services" / "Dockerfile")
    assert sources == ["pyproject.toml", "README.md", "constraints.txt", "services/earshot"]


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_the_local_values_name_every_image_built_here_and_pass_the_charts_schema() -> None:
    values = images.local_values()
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(_merged(defaults, values), schema)
    named = {
        f"{v['repository']}:{v['tag']}"
        for v in (values["image"], values["operator"]["image"], values["triton"]["cpu"]["image"],
                  values["redis"]["image"], values["mysql"]["image"])
    }  # fmt: skip
    tag = images.app_version()
    specs = images.chart_images() + images.standin_images()
    assert named == {spec.reference(tag) for spec in specs}
    pulls = [values["image"], values["operator"]["image"], values["redis"]["image"]]
    assert {v["pullPolicy"] for v in pulls} == {"Never"}


def test_the_release_images_are_the_table_of_the_operations_guide() -> None:
    guide = (images.REPO / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \| `[^`]+/Dockerfile` \|", guide, re.M))
    assert {spec.repository for spec in images.release_images(gpu=True)} == table


def test_pruning_keeps_the_newest_and_recently_used_archives_of_one_image_only(
    tmp_path: Path,
) -> None:
    def archive(name: str, index: int, used: float) -> Path:
        path = tmp_path / f"{name}-{index:016x}.tar"
        path.write_bytes(b"")
        path.with_suffix(".log").write_text("log\n")
        os.utime(path, (used, used))
        return path

    now = time.time()
    old = [archive("earshot", i, 1000 + i) for i in range(5)]
    images.prune_archives(old[-1])
    assert sorted(p.name for p in tmp_path.glob("earshot-0*.tar")) == [p.name for p in old[2:]]
    assert not old[0].with_suffix(".log").exists()

    recent = [archive("earshot", 100 + i, now - 60 * i) for i in range(4)]  # used this hour
    operator = [archive("earshot-operator", i, 1000 + i) for i in range(5)]
    images.prune_archives(recent[0])
    assert sorted(p.name for p in tmp_path.glob("earshot-0*.tar")) == [p.name for p in recent]
    assert all(p.exists() for p in operator)
