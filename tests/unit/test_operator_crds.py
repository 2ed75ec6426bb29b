"""The CRDs in crds/: documented, structural, 1.20-compatible and in step with the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from earshot_operator import resources
from earshot_operator.settings import ENGINES

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _load(kind: resources.Kind) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRDS / f"{kind.plural}.earshot.dev.yaml").read_text())
    return loaded


def _schema(kind: resources.Kind) -> dict[str, Any]:
    schema: dict[str, Any] = _load(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


KINDS = pytest.mark.parametrize("kind", resources.KINDS.values(), ids=list(resources.KINDS))


@KINDS
def test_every_field_has_a_description(kind: resources.Kind) -> None:
    undocumented = [
        path
        for path, node in _walk(_schema(kind), kind.kind)
        if "description" not in node and not path.endswith(".metadata")
    ]
    assert undocumented == []


@KINDS
def test_crd_names_match_the_operator(kind: resources.Kind) -> None:
    crd = _load(kind)
    assert crd["metadata"]["name"] == f"{kind.plural}.{resources.GROUP}"
    assert crd["spec"]["names"]["kind"] == kind.kind
    assert crd["spec"]["names"]["shortNames"] == [kind.short]
    assert crd["spec"]["versions"][0]["name"] == resources.VERSION
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


@KINDS
def test_printer_columns_show_phase_ready_reason_engine_endpoint_and_age(
    kind: resources.Kind,
) -> None:
    columns = _load(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    # a TalkRoom also shows its call, as its gateway reports it
    call = ["Call", "Speakers"] if kind.kind == "TalkRoom" else []
    names = ["Phase", "Ready", "Reason", "Engine", *call, "Endpoint", "Age"]
    assert [c["name"] for c in columns] == names


@KINDS
def test_engine_enum_matches_the_settings(kind: resources.Kind) -> None:
    assert tuple(_schema(kind)["properties"]["spec"]["properties"]["engine"]["enum"]) == ENGINES


@KINDS
def test_no_rules_that_a_1_20_apiserver_cannot_read(kind: resources.Kind) -> None:
    keys = {key for _, node in _walk(_schema(kind), kind.kind) for key in node}
    assert "x-kubernetes-validations" not in keys
