"""Rules both sides apply to a session are written once (``earshot_operator.dataplane``).

The data plane holds checked copies (it cannot import the operator) and the CRDs, both the file in
crds/ and the chart's copy, say the same; a session the gateway would refuse is refused by the
API server, or reported by the operator in the status, never started to fail.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from annotated_types import MaxLen
from pydantic import ValidationError

from earshot import events, settings
from earshot.events import InvalidSessionId, parse_session_id
from earshot.settings import Settings
from earshot_operator import dataplane, specs

REPO = Path(__file__).resolve().parents[2]
SESSION_CRDS = [
    REPO / "crds" / "transcriptionsessions.earshot.dev.yaml",
    REPO / "charts" / "earshot" / "crds" / "transcriptionsessions.earshot.dev.yaml",
]

ACCEPTED = ["a", "call-9", "CALL_9.x", "sip:alice", "9" * 64, "a:b.c_d-e", "0"]
REFUSED = ["", "-a", ".a", ":a", "a b", "a/b", "a@b", "é", "a" * 65, "a\n", "a%20"]


def _spec(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    return spec


def _accepted_by_the_gateway(raw: str) -> bool:
    try:
        parse_session_id(raw)
    except InvalidSessionId:
        return False
    return True


def _accepted_by_the_operator(raw: str) -> bool:
    # an empty sessionId falls back to the resource name: one that is no session id either
    body = {"metadata": {"name": "-x"}, "spec": {"sessionId": raw}}
    try:
        specs.parse_session(body)
    except specs.SpecError:
        return False
    return True


def test_the_data_plane_copy_of_the_session_id_rule_is_the_operators() -> None:
    assert events.SESSION_ID_PATTERN == dataplane.SESSION_ID_PATTERN
    assert events.MAX_SESSION_ID_LENGTH == dataplane.SESSION_ID_MAX_LENGTH == 64


@pytest.mark.parametrize("path", SESSION_CRDS, ids=["crds", "chart"])
def test_the_crd_session_id_is_the_rule(path: Path) -> None:
    session_id = _spec(path)["properties"]["sessionId"]
    assert session_id["pattern"] == dataplane.SESSION_ID_PATTERN
    assert session_id["maxLength"] == dataplane.SESSION_ID_MAX_LENGTH


@pytest.mark.parametrize("raw", ACCEPTED + REFUSED)
def test_gateway_crd_and_operator_accept_the_same_session_ids(raw: str) -> None:
    by_crd = len(raw) <= dataplane.SESSION_ID_MAX_LENGTH and bool(
        # the API server's Go regexp: '$' is the end of the text, as with fullmatch
        re.fullmatch(dataplane.SESSION_ID_PATTERN, raw)
    )
    assert _accepted_by_the_gateway(raw) is by_crd is _accepted_by_the_operator(raw)
    assert by_crd is (raw in ACCEPTED)


def test_a_resource_name_that_is_no_session_id_is_a_spec_error_naming_the_field() -> None:
    body = {"metadata": {"name": "a" * 65}, "spec": {}}
    with pytest.raises(specs.SpecError, match=r"from the resource name .*set spec\.sessionId"):
        specs.parse_session(body)


@pytest.mark.parametrize("path", SESSION_CRDS, ids=["crds", "chart"])
def test_the_crd_user_id_fits_the_column(path: Path) -> None:
    assert _spec(path)["properties"]["userId"]["maxLength"] == dataplane.USER_ID_MAX_LENGTH
    field = Settings.model_fields["user_id"]
    assert MaxLen(dataplane.USER_ID_MAX_LENGTH) in field.metadata


def test_a_user_id_longer_than_the_column_is_a_spec_error() -> None:
    body = {"metadata": {"name": "x"}, "spec": {"userId": "u" * 65}}
    with pytest.raises(specs.SpecError, match=r"spec\.userId is 65 characters long"):
        specs.parse_session(body)


def test_the_data_plane_copy_of_the_engine_languages_is_the_operators() -> None:
    assert settings.ENGINE_LANGUAGES == dataplane.ENGINE_LANGUAGES
    assert settings.AUTO_LANGUAGE == dataplane.AUTO_LANGUAGE
    assert set(dataplane.ENGINE_LANGUAGES) == set(
        get_args(Settings.model_fields["engine"].annotation)
    )


@pytest.mark.parametrize("path", SESSION_CRDS, ids=["crds", "chart"])
def test_the_crd_admits_exactly_the_languages_each_engine_recognises(path: Path) -> None:
    spec = _spec(path)
    every = {dataplane.AUTO_LANGUAGE}.union(*dataplane.ENGINE_LANGUAGES.values())
    assert set(spec["properties"]["language"]["enum"]) == every
    admitted = set()
    for branch in spec["anyOf"]:
        rules = branch["properties"]
        engines = rules.get("engine", spec["properties"]["engine"])["enum"]
        admitted |= {(e, lang) for e in engines for lang in rules["language"]["enum"]}
    assert admitted == {
        (engine, language)
        for engine, languages in dataplane.ENGINE_LANGUAGES.items()
        for language in (dataplane.AUTO_LANGUAGE, *languages)
    }


@pytest.mark.parametrize(
    ("engine", "language", "accepted"),
    [
        ("paraformer", "zh", True),
        ("paraformer", "en", True),
        ("paraformer", "fr", False),
        ("kyutai", "fr", True),
        ("kyutai", "zh", False),
        ("kyutai", "auto", True),
        ("kyutai", "de", False),
    ],
)
def test_operator_and_gateway_refuse_the_same_languages(
    engine: str, language: str, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"metadata": {"name": "x"}, "spec": {"engine": engine, "language": language}}
    reason = f"engine {engine} cannot recognise language {language!r}"
    monkeypatch.setenv("EARSHOT_ENGINE", engine)
    monkeypatch.setenv("EARSHOT_LANGUAGE", language)
    if accepted:
        assert specs.parse_session(body).language == language
        assert Settings().language == language
        return
    with pytest.raises(specs.SpecError, match=re.escape(reason)):
        specs.parse_session(body)
    with pytest.raises(ValidationError, match=re.escape(reason)):
        Settings()
