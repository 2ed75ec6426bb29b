"""A TalkRoom offers only languages its engine recognises, the rule sessions follow
(``earshot_operator.dataplane.ENGINE_LANGUAGES``).

A caption carries ``langId`` = the room's language, and neither engine can be steered to one: a
language the engine does not recognise would only mislabel its captions. The CRD (both copies),
the operator and ``earshot talk`` refuse the same pairs; the API server's answer is
``tests/e2e/test_talkroom_call.py``'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from earshot.cli.commands import app
from earshot.gateways.talk.configuration import TalkSettings
from earshot_operator import dataplane, specs

REPO = Path(__file__).resolve().parents[2]
ROOM_CRDS = [
    REPO / "crds" / "talkrooms.earshot.dev.yaml",
    REPO / "charts" / "earshot" / "crds" / "talkrooms.earshot.dev.yaml",
]
EXAPP_ENV = {
    "APP_SECRET": "app",
    "LT_HPB_URL": "wss://hpb.example.com/standalone-signaling/",
    "LT_INTERNAL_SECRET": "internal",
    "EARSHOT_DEMO_MODEL": "true",
}


def _spec(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    return spec


def _room(engine: str, languages: list[str]) -> dict[str, Any]:
    return {
        "kind": "TalkRoom",
        "metadata": {"name": "standup"},
        "spec": {
            "roomToken": "r00m",
            "hpbUrl": "wss://hpb.example/spreed",
            "nextcloudUrl": "https://cloud.example",
            "internalSecretRef": {"name": "hpb"},
            "engine": engine,
            "languages": languages,
        },
    }


@pytest.mark.parametrize("path", ROOM_CRDS, ids=["crds", "chart"])
def test_the_crd_admits_exactly_the_languages_each_engine_recognises(path: Path) -> None:
    spec = _spec(path)
    every = set().union(*dataplane.ENGINE_LANGUAGES.values())
    assert set(spec["properties"]["languages"]["items"]["enum"]) == every
    admitted = set()
    for branch in spec["anyOf"]:
        rules = branch["properties"]
        engines = rules.get("engine", spec["properties"]["engine"])["enum"]
        admitted |= {(e, lang) for e in engines for lang in rules["languages"]["items"]["enum"]}
    assert admitted == {
        (engine, language)
        for engine, languages in dataplane.ENGINE_LANGUAGES.items()
        for language in languages
    }


@pytest.mark.parametrize(
    ("engine", "languages", "refused"),
    [
        ("paraformer", ["en", "zh"], []),
        ("paraformer", ["zh"], []),
        ("paraformer", ["en", "fr"], ["fr"]),
        ("paraformer", ["de", "fr"], ["de", "fr"]),
        ("kyutai", ["fr", "en"], []),
        ("kyutai", ["en", "zh"], ["zh"]),
    ],
)
def test_operator_and_room_gateway_refuse_the_same_languages(
    engine: str, languages: list[str], refused: list[str]
) -> None:
    talk = TalkSettings(languages=",".join(languages))
    if not refused:
        assert specs.parse_room(_room(engine, languages)).languages == tuple(languages)
        assert talk.language_refusal(engine) == ""
        return
    named = ", ".join(map(repr, refused))
    reason = f"engine {engine} cannot recognise language {named} "
    with pytest.raises(specs.SpecError, match=re.escape(reason + "(spec.languages)")):
        specs.parse_room(_room(engine, languages))
    assert talk.language_refusal(engine).startswith(reason + "(EARSHOT_TALK_LANGUAGES)")


@pytest.fixture
def talk_command(
    monkeypatch: pytest.MonkeyPatch, tiny_model_cache: Path
) -> Callable[[dict[str, str]], tuple[int, str]]:
    """``earshot talk`` with ``env``; one that starts cannot listen (an address not of this
    host), so it ends at once instead of serving."""
    for name in ("EARSHOT_ENGINE", "EARSHOT_MODEL_DIR", "MODEL_PATH", "EARSHOT_TRITON_URL"):
        monkeypatch.delenv(name, raising=False)
    pinned = {"EARSHOT_CACHE_DIR": str(tiny_model_cache), "EARSHOT_TALK_APP_HOST": "203.0.113.1"}

    def run(env: dict[str, str]) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["talk"], env={**pinned, **env})
        return result.exit_code, result.output

    return run


def test_the_talk_command_refuses_to_offer_a_language_its_engine_cannot_recognise(
    talk_command: Callable[[dict[str, str]], tuple[int, str]],
) -> None:
    # outside a cluster the process recognises with its own engine (paraformer by default)
    code, output = talk_command({**EXAPP_ENV, "EARSHOT_TALK_LANGUAGES": "en,fr"})
    assert code == 2
    assert output == (
        "earshot: error: engine paraformer cannot recognise language 'fr' "
        "(EARSHOT_TALK_LANGUAGES): it recognises zh and en by itself and cannot be steered; "
        "offer only zh, en\n"
    )


def test_in_a_cluster_the_exapp_checks_the_languages_against_its_talkrooms_engine(
    talk_command: Callable[[dict[str, str]], tuple[int, str]],
) -> None:
    cluster = {**EXAPP_ENV, "EARSHOT_TALK_IN_CLUSTER": "true", "EARSHOT_TALK_ENGINE": "kyutai"}
    code, output = talk_command({**cluster, "EARSHOT_TALK_LANGUAGES": "en,zh"})
    assert code == 2
    assert output.startswith("earshot: error: engine kyutai cannot recognise language 'zh' ")


def test_a_room_gateway_captions_with_the_engine_the_operator_gave_it() -> None:
    room = TalkSettings(room_token="r00m", talkroom_name="talk-r00m", engine="kyutai")
    exapp = TalkSettings(in_cluster=True, engine="kyutai")
    assert room.captioning_engine("paraformer") == "paraformer"
    assert exapp.captioning_engine("paraformer") == "kyutai"
