"""The API server's schema rejects invalid resources with messages a user can act on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane, ControlPlaneError


def _rejection(control_plane: ControlPlane, body: dict[str, Any]) -> str:
    with pytest.raises(ControlPlaneError) as rejected:
        # --validate=false: the API server must reject it, not only kubectl
        control_plane.kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(body))
    return str(rejected.value)


def test_talk_room_without_room_token_is_rejected(control_plane: ControlPlane) -> None:
    body = helpers.room_body("no-token", "default")
    del body["spec"]["roomToken"]
    message = _rejection(control_plane, body)
    assert "spec.roomToken: Required value" in message


def test_session_with_unknown_engine_is_rejected(control_plane: ControlPlane) -> None:
    message = _rejection(control_plane, helpers.session_body("x", "default", engine="whisper"))
    assert 'spec.engine: Unsupported value: "whisper"' in message
    assert '"paraformer", "kyutai"' in message


def test_session_with_bad_codec_is_rejected(control_plane: ControlPlane) -> None:
    body = helpers.session_body("x", "default", audio={"codec": "mp3"})
    message = _rejection(control_plane, body)
    assert 'spec.audio.codec: Unsupported value: "mp3"' in message
    assert '"alaw", "ulaw", "pcm16le"' in message


def test_session_with_unsupported_rate_is_rejected(control_plane: ControlPlane) -> None:
    body = helpers.session_body("x", "default", audio={"rate": 44100})
    assert "spec.audio.rate: Unsupported value: 44100" in _rejection(control_plane, body)


def test_defaults_fill_an_empty_session_spec(control_plane: ControlPlane) -> None:
    body = helpers.session_body("defaults", "default")
    out = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(body)
    )
    spec = json.loads(out)["spec"]
    assert spec["engine"] == "paraformer"
    assert spec["audio"] == {"codec": "alaw", "rate": 8000}
    assert (spec["auth"], spec["returnTranscription"], spec["idleTimeoutSeconds"]) == (
        "token",
        True,
        300,
    )


def test_explain_describes_the_spec_fields(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("explain", "transcriptionsession.spec.audio.codec")
    assert "Sample encoding of the binary frames" in out
    out = control_plane.kubectl("explain", "talkroom.spec")
    assert "roomToken" in out
    assert "-required-" in out
