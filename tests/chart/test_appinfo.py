"""The ExApp manifest (services/appinfo/info.xml) matches the Talk gateway and the chart."""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ElementTree

import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from earshot.gateways.talk.configuration import APP_ID, TalkSettings
from earshot.settings import Settings
from tests.chart.charts import CHART, REPO

INFO = ElementTree.parse(REPO / "services" / "appinfo" / "info.xml").getroot()


def _aliases(model: type[BaseSettings]) -> set[str]:
    names: set[str] = set()
    for field in model.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
    return names


def test_app_id_and_versions_match_the_gateway_and_the_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert INFO.findtext("id") == APP_ID
    assert INFO.findtext("version") == chart["appVersion"] == project["version"]
    assert INFO.findtext("external-app/docker-install/image-tag") == chart["appVersion"]


def test_every_variable_is_one_the_gateway_reads() -> None:
    known = _aliases(TalkSettings) | _aliases(Settings)
    names = [
        v.findtext("name") for v in INFO.iterfind("external-app/environment-variables/variable")
    ]
    assert names
    assert not [n for n in names if n not in known], known


def test_docker_install_image_is_the_talk_target_of_the_services_image() -> None:
    image = INFO.findtext("external-app/docker-install/image")
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    assert (
        f"{INFO.findtext('external-app/docker-install/registry')}/{image}" == f"{repository}-talk"
    )
    dockerfile = (REPO / "services" / "Dockerfile").read_text()
    assert re.search(r'^FROM runtime AS talk\n(?:.*\n)*?CMD \["talk"\]', dockerfile, re.M)


def test_nextcloud_33_to_35_are_admitted() -> None:
    # Talk's live translation (which this ExApp offers) and HaRP come with Nextcloud 33.
    admitted = INFO.find("dependencies/nextcloud")
    assert admitted is not None
    assert (admitted.get("min-version"), admitted.get("max-version")) == ("33", "35")
