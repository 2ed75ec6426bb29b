"""HaRP mode: the ExApp serves on HaRP's unix socket and runs frpc with HaRP's configuration.

HaRP's frp client is not packaged on PyPI, Debian or npm, so ``frpc`` here is a stand-in script
that records how it was started and its configuration, and runs until killed: what the ExApp owes
HaRP (the socket, the configuration, stopping when frpc stops) is checked against it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from earshot.gateways.talk import harp, probing, serving
from earshot.gateways.talk.configuration import TalkSettings
from earshot.settings import Settings
from tests.hpb_double import eventually
from tests.talk_exapp import APP_SECRET, appapi_headers

FRPC = """#!/bin/sh
echo "$$ $*" > "{record}"
cp "$2" "{record}.toml"
exec sleep 600
"""


def harp_settings(tmp_path: Path, **overrides: Any) -> TalkSettings:
    values: dict[str, Any] = {
        "app_secret": APP_SECRET,
        "hpb_url": "ws://127.0.0.1:9/spreed",
        "internal_secret": "internal",
        "hp_shared_key": "shared-key",
        "hp_frp_address": "harp.example.com",
        "hp_frp_port": 8782,
        "app_port": 23456,
        "harp_socket": str(tmp_path / "exapp.sock"),
        "frp_cert_dir": str(tmp_path / "certs"),
        "frpc_path": str(tmp_path / "frpc"),
        **overrides,
    }
    return TalkSettings(**values)


@pytest.fixture
def frpc(tmp_path: Path) -> Path:
    """The stand-in frpc; returns where it writes its record."""
    record = tmp_path / "frpc.started"
    script = tmp_path / "frpc"
    script.write_text(FRPC.format(record=record))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return record


@asynccontextmanager
async def serving_harp(
    talk: TalkSettings, cache: Path
) -> AsyncIterator[tuple[asyncio.Task[None], httpx.AsyncClient]]:
    task = asyncio.create_task(serving.serve(Settings(cache_dir=cache), talk))
    transport = httpx.AsyncHTTPTransport(uds=talk.harp_socket)
    async with httpx.AsyncClient(transport=transport, base_url="http://harp") as http:

        def listening() -> bool:
            return Path(talk.harp_socket).is_socket() or task.done()

        try:
            await eventually(listening, 60, what="the ExApp to listen on HaRP's socket")
            yield task, http
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_frpc_is_configured_to_forward_app_port_to_the_socket(tmp_path: Path) -> None:
    settings = harp_settings(tmp_path)
    plain = tomllib.loads(harp.frpc_config(settings, tls=False))
    assert plain == {
        "serverAddr": "harp.example.com",
        "serverPort": 8782,
        "loginFailExit": False,
        "transport": {"tls": {"enable": False}},
        "metadatas": {"token": "shared-key"},
        "proxies": [
            {
                "remotePort": 23456,
                "type": "tcp",
                "name": "live_transcription",
                "plugin": {"type": "unix_domain_socket", "unixPath": str(tmp_path / "exapp.sock")},
            }
        ],
    }
    tls = tomllib.loads(harp.frpc_config(settings, tls=True))["transport"]["tls"]
    assert tls == {
        "enable": True,
        "certFile": str(tmp_path / "certs/client.crt"),
        "keyFile": str(tmp_path / "certs/client.key"),
        "trustedCaFile": str(tmp_path / "certs/ca.crt"),
        "serverName": "harp.nc",
    }


def test_tls_is_used_when_the_client_certificate_is_mounted(tmp_path: Path) -> None:
    settings = harp_settings(tmp_path)
    assert not harp.uses_tls(settings)
    (tmp_path / "certs").mkdir()
    for name in ("client.crt", "client.key", "ca.crt"):
        (tmp_path / "certs" / name).write_text("pem")
    assert harp.uses_tls(settings)


async def test_under_harp_the_exapp_serves_on_the_socket_and_runs_frpc(
    tmp_path: Path, frpc: Path, tiny_model_cache: Path
) -> None:
    talk = harp_settings(tmp_path)
    async with serving_harp(talk, tiny_model_cache) as (task, http):
        assert not task.done(), task
        heartbeat = await http.get("/heartbeat")
        languages = await http.get("/api/v1/languages", headers=appapi_headers())
        await eventually(frpc.exists, 10, what="frpc to start")
        healthy = await asyncio.to_thread(probing.probe, talk)
    assert (heartbeat.status_code, heartbeat.json()) == (200, {"status": "ok"})
    assert list(languages.json()) == ["en"]
    assert healthy == ""
    argv = (await asyncio.to_thread(frpc.read_text)).split()[1:]
    assert argv[0] == "-c"
    config = tomllib.loads(await asyncio.to_thread(Path(f"{frpc}.toml").read_text))
    assert config["proxies"][0]["plugin"]["unixPath"] == talk.harp_socket
    assert config["metadatas"]["token"] == "shared-key"


async def test_when_frpc_stops_the_exapp_stops_with_the_reason(
    tmp_path: Path, frpc: Path, tiny_model_cache: Path
) -> None:
    talk = harp_settings(tmp_path)
    async with serving_harp(talk, tiny_model_cache) as (task, _):
        await eventually(frpc.exists, 10, what="frpc to start")
        pid = int((await asyncio.to_thread(frpc.read_text)).split()[0])
        os.kill(pid, signal.SIGKILL)  # the stand-in frpc this test started
        await eventually(task.done, 20, what="the ExApp to stop")
        with pytest.raises(harp.FrpUnavailable, match="frpc exited with status -9"):
            task.result()


async def test_without_frpc_harp_mode_does_not_start(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    talk = harp_settings(tmp_path)
    with pytest.raises(harp.FrpUnavailable, match="needs the frp client"):
        await serving.serve(Settings(cache_dir=tiny_model_cache), talk)
    assert not await asyncio.to_thread(Path(talk.harp_socket).exists)


def test_the_probe_asks_on_app_port_without_harp(tmp_path: Path) -> None:
    plain = TalkSettings(app_host="0.0.0.0", app_port=23999)
    link = probing.connection(plain)
    assert (link.host, link.port) == ("127.0.0.1", 23999)
    assert "no answer" in probing.probe(harp_settings(tmp_path))
