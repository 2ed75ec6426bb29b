"""docs/examples/telephony_client.py, run as a reader of docs/telephony-clients.md would run it,
against a real gateway that needs a token."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import SecretStr
from websockets.asyncio.client import connect

from earshot.events import SessionId
from earshot.gateways.g711 import serving
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url
from tests.integration.test_g711_drop_in import sample_wav

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "telephony_client.py"
TOKEN = "example-token"


async def run_example(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_example_client_streams_prints_and_waits_for_the_last_final(
    settings: Settings, tmp_path: Path
) -> None:
    guarded = settings.model_copy(update={"access_token": SecretStr(TOKEN)})
    wav = sample_wav(tmp_path / "call.wav")
    async with (
        serving.open_services(guarded) as services,
        running_gateway(guarded, services) as base,
    ):
        code, out, err = await run_example(
            session_url(base, "example"), str(wav), "--token", TOKEN, "--speed", "0"
        )
        stored = await services.stores.segments.segments(SessionId("example"))
    assert code == 0, err
    printed = [line for line in out.splitlines() if line.startswith("final ")]
    assert printed, out
    # Every final the gateway stored was printed: the client waited for the last one.
    assert printed == [f"final {s.seq}: {s.text}" for s in stored]


async def test_the_example_client_stops_at_a_refusal_that_is_not_retryable(
    settings: Settings, tmp_path: Path
) -> None:
    guarded = settings.model_copy(update={"access_token": SecretStr(TOKEN)})
    wav = sample_wav(tmp_path / "call.wav")
    async with (
        serving.open_services(guarded) as services,
        running_gateway(guarded, services) as base,
    ):
        code, _, err = await run_example(
            session_url(base, "example"), str(wav), "--token", "wrong", "--speed", "0"
        )
    assert code == 1
    assert "error unauthorized:" in err
    assert "refused: unauthorized" in err


async def test_the_example_client_reconnects_after_a_retryable_refusal(
    settings: Settings, tmp_path: Path
) -> None:
    # One stream at a time, held by another caller: the example's first connection gets 1013.
    capped = settings.model_copy(update={"max_connections": 1})
    wav = sample_wav(tmp_path / "call.wav")
    async with (
        serving.open_services(capped) as services,
        running_gateway(capped, services) as base,
    ):
        blocker = await connect(session_url(base, "blocker"))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            session_url(base, "retried"),
            str(wav),
            "--speed",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        refused = await asyncio.wait_for(process.stderr.readline(), 60)
        await blocker.close()  # the slot is free before the example's back-off ends
        out, err = await asyncio.wait_for(process.communicate(), 120)
        stored = await services.stores.segments.segments(SessionId("retried"))
    assert refused.decode().startswith("error too_many_connections:")
    assert process.returncode == 0, err.decode()
    assert "final 1:" in out.decode()
    assert [s.seq for s in stored][:1] == [1]
