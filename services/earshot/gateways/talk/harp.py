"""AppAPI's HaRP deploy daemon: the ExApp serves on a unix socket and runs HaRP's frp client.

When HaRP deploys an ExApp it sets ``HP_SHARED_KEY``, ``HP_FRP_ADDRESS`` and ``HP_FRP_PORT``; the
ExApp then runs ``frpc``, which logs in to HaRP's frp server with the shared key and forwards the
remote port ``APP_PORT`` to the unix socket ``/tmp/exapp.sock``, where the ExApp listens (no TCP
port of its own). TLS to HaRP is used when ``/certs/frp`` holds the client certificate.
:func:`frpc_config` writes that configuration (pure); :class:`FrpClient` owns the ``frpc`` process:
when it exits, the ExApp cannot be reached and the process stops with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from pathlib import Path

from earshot.gateways.talk.configuration import TalkSettings

log = logging.getLogger(__name__)

_CERTS = ("client.crt", "client.key", "ca.crt")


class FrpUnavailable(RuntimeError):
    """The frp client cannot be started or stopped running."""


def frpc_config(settings: TalkSettings, *, tls: bool) -> str:
    """The frpc TOML that forwards HaRP's ``APP_PORT`` to our unix socket."""

    def q(value: str) -> str:
        return json.dumps(value)  # a TOML basic string is a JSON string

    lines = [
        f"serverAddr = {q(settings.hp_frp_address)}",
        f"serverPort = {settings.hp_frp_port}",
        "loginFailExit = false",
        f"transport.tls.enable = {'true' if tls else 'false'}",
    ]
    if tls:
        certs = Path(settings.frp_cert_dir)
        lines += [
            f"transport.tls.certFile = {q(str(certs / 'client.crt'))}",
            f"transport.tls.keyFile = {q(str(certs / 'client.key'))}",
            f"transport.tls.trustedCaFile = {q(str(certs / 'ca.crt'))}",
            'transport.tls.serverName = "harp.nc"',
        ]
    lines += [
        f"metadatas.token = {q(settings.hp_shared_key.get_secret_value())}",
        "",
        "[[proxies]]",
        f"remotePort = {settings.app_port}",
        'type = "tcp"',
        f"name = {q(settings.app_id)}",
        "[proxies.plugin]",
        'type = "unix_domain_socket"',
        f"unixPath = {q(settings.harp_socket)}",
        "",
    ]
    return "\n".join(lines)


def uses_tls(settings: TalkSettings) -> bool:
    """Whether the client certificate for HaRP is mounted."""
    return all((Path(settings.frp_cert_dir) / name).is_file() for name in _CERTS)


class FrpClient:
    """The running ``frpc``; :attr:`exited` completes when it stops."""

    def __init__(self, settings: TalkSettings, *, workdir: Path) -> None:
        self._settings = settings
        self._config = workdir / "frpc.toml"
        self._process: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Future[str] | None = None

    async def start(self) -> None:
        """Write the configuration and start frpc.

        Raises:
            FrpUnavailable: the binary is not there.
        """
        binary = shutil.which(self._settings.frpc_path)
        if binary is None:
            raise FrpUnavailable(
                f"HaRP mode (HP_SHARED_KEY) needs the frp client, and {self._settings.frpc_path!r}"
                " is not installed (EARSHOT_TALK_FRPC_PATH)"
            )
        self._config.write_text(frpc_config(self._settings, tls=uses_tls(self._settings)))
        self._config.chmod(0o600)  # it holds the shared key
        self._process = await asyncio.create_subprocess_exec(binary, "-c", str(self._config))
        self.exited = asyncio.ensure_future(self._wait(self._process))
        log.info("frpc started for HaRP at %s", self._settings.hp_frp_address)

    async def aclose(self) -> None:
        """Stop frpc."""
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
        if self.exited is not None:
            await self.exited

    @staticmethod
    async def _wait(process: asyncio.subprocess.Process) -> str:
        code = await process.wait()
        return f"frpc exited with status {code}: HaRP cannot reach the ExApp"
