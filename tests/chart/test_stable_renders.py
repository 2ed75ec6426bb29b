"""Renders a GitOps tool can diff: with the Secrets given, two renders are the same text; the
generated ones are kept by ``helm uninstall``."""

from __future__ import annotations

import yaml

from tests.chart.charts import CHART, find, helm, template

GIVEN_SECRETS = {
    "storage.existingSecret": "my-storage",
    "talk.enabled": "true",
    "talk.existingSecret": "my-talk",
    "talk.nextcloudUrl": "https://cloud.example.com",
    "talk.hpbUrl": "wss://hpb.example.com/standalone-signaling/",
}


def _render(sets: dict[str, str]) -> str:
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    return helm("template", "rel", str(CHART), "--namespace", "earshot", *args)


def test_renders_with_the_secrets_given_are_identical() -> None:
    first, second = _render(GIVEN_SECRETS), _render(GIVEN_SECRETS)
    assert first == second
    kinds = [(m["kind"], m["metadata"]["name"]) for m in yaml.safe_load_all(first) if m]
    assert ("Secret", "rel-earshot-storage") not in kinds
    assert ("Secret", "rel-earshot-talk") not in kinds


def test_generated_secrets_differ_per_render_and_are_kept_by_uninstall() -> None:
    # why GitOps must give the Secrets: helm template has no cluster to look them up in
    first, second = _render({}), _render({})
    assert first != second
    storage = find(template(), "Secret", "-storage")
    assert storage["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    talk = find(template(sets={"talk.enabled": "true"}), "Secret", "-talk")
    assert talk["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
