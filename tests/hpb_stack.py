"""Talk's real HPB stack for integration tests: nats-server, Janus and the signaling server.

Janus never offers ICE candidates on a loopback interface, so the stack runs inside a network
namespace made for the test session: a veth pair joins it to the host (``HOST_IP`` outside,
``STACK_IP`` inside) and Janus may use only the inner end. The signaling server listens on
``STACK_IP``; its Nextcloud backend is :class:`BackendDouble`, an HTTP server in the test process
on ``HOST_IP`` that answers the OCS-wrapped capabilities, auth and room requests and verifies their
signatures. "In call" state only comes from the backend: :meth:`HpbStack.post_in_call` sends the
signed ``incall`` update the real Nextcloud would.

Binaries come from ``tests/hpb_setup.sh`` (janus and nats-server from Debian, the signaling server
1.2.4 from bookworm-backports, unpacked into ``~/.cache/earshot/hpb``). Needs root (``ip netns``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

SETUP_SCRIPT = Path(__file__).with_name("hpb_setup.sh")
BACKEND_PATH = "/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
_READY_TIMEOUT = 30.0
# Only the videoroom plugin and the WebSocket transport are needed.
_DISABLED_PLUGINS = ",".join(
    f"libjanus_{name}.so"
    for name in (
        "audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
        "streaming", "textroom", "videocall", "voicemail",
    )
)  # fmt: skip


class StackUnavailable(RuntimeError):
    """A part of the stack is missing or did not come up."""


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise StackUnavailable(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def signaling_binary() -> str:
    """Run the idempotent setup script and return the signaling server's path."""
    if os.geteuid() != 0:
        raise StackUnavailable(
            "the HPB stack needs root (ip netns, apt-get): run the tests as root"
        )
    result = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise StackUnavailable(f"{SETUP_SCRIPT} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def sign(secret: str, body: bytes) -> dict[str, str]:
    """Headers of a request signed for or by the signaling server's backend API."""
    random = secrets.token_hex(32)
    checksum = hmac.new(secret.encode(), random.encode() + body, hashlib.sha256).hexdigest()
    return {"Spreed-Signaling-Random": random, "Spreed-Signaling-Checksum": checksum}


def _ocs(data: Any) -> bytes:
    meta = {"status": "ok", "statuscode": 200, "message": "OK"}
    return json.dumps({"ocs": {"meta": meta, "data": data}}).encode()


@dataclass
class BackendDouble:
    """The Nextcloud backend API the signaling server calls (what cannot run here: Nextcloud)."""

    host: str
    secret: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> None:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path.startswith("/ocs/v2.php/cloud/capabilities"):
                    self._reply(_ocs(double.capabilities()))
                elif self.path.startswith("/ocs/v2.php/apps/spreed/api/v3/signaling/settings"):
                    self._reply(_ocs({"server": "", "stunservers": [], "turnservers": []}))
                else:
                    self._reply(b"{}", status=404)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._reply(_ocs([]))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.startswith(BACKEND_PATH):
                    self._reply(b"{}", status=404)
                    return
                random = self.headers.get("Spreed-Signaling-Random", "")
                expected = hmac.new(
                    double.secret.encode(), random.encode() + body, hashlib.sha256
                ).hexdigest()
                if not hmac.compare_digest(
                    expected, self.headers.get("Spreed-Signaling-Checksum", "")
                ):
                    self._reply(b'{"error": "invalid checksum"}', status=403)
                    return
                request = json.loads(body)
                double.requests.append(request)
                self._reply(_ocs(double.answer(request)))

            def _reply(self, body: bytes, *, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def capabilities(self) -> dict[str, Any]:
        spreed = {
            "features": ["audio", "video", "chat-v2", "conversation-v4", "signaling-v3", "mcu"],
            "config": {"signaling": {"session-ping-limit": 200}},
        }
        return {"version": {"major": 29, "string": "29.0.0"}, "capabilities": {"spreed": spreed}}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("type")
        if kind == "auth":
            params = request["auth"].get("params", {})
            user = params.get("userid", "")
            reply = {"version": "1.0", "userid": user, "user": {"displayname": user}}
            return {"type": "auth", "auth": reply}
        if kind == "room":
            room = request["room"]
            reply = {
                "version": "1.0",
                "roomid": room["roomid"],
                "properties": {"name": room["roomid"], "type": 3},
                "permissions": ["publish-media", "publish-audio", "publish-screen"],
            }
            return {"type": "room", "room": reply}
        return {"type": kind, kind: {}} if isinstance(kind, str) else {}


@dataclass
class NetworkNamespace:
    """A namespace joined to the host by a veth pair."""

    name: str
    host_if: str
    inner_if: str
    host_ip: str
    inner_ip: str

    def create(self) -> None:
        self.delete()
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
        _run("ip", "link", "set", self.inner_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "-n", self.name)
        _run(*inside, "addr", "add", f"{self.inner_ip}/24", "dev", self.inner_if)
        _run(*inside, "link", "set", self.inner_if, "up")
        _run(*inside, "link", "set", "lo", "up")

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class _Process:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class HpbStack:
    """nats-server, Janus and the signaling server in a private namespace, plus the backend double."""

    def __init__(self, workdir: Path, *, ice_interfaces: tuple[str, ...] = ()) -> None:
        """``ice_interfaces``: more interfaces of the stack's namespace Janus offers candidates on
        (made later, say a link to a cluster's pod network: Janus sends from a candidate's own
        interface, whatever the routes say)."""
        self.workdir = workdir
        self.ice_interfaces = ice_interfaces
        suffix = os.getpid() % 10_000
        subnet = 10 + os.getpid() % 240
        self.netns = NetworkNamespace(
            name=f"earshot-hpb-{suffix}",
            host_if=f"esh{suffix}h",
            inner_if=f"esh{suffix}n",
            host_ip=f"10.213.{subnet}.1",
            inner_ip=f"10.213.{subnet}.2",
        )
        self.internal_secret = secrets.token_hex(16)
        self.backend_secret = secrets.token_hex(16)
        self.signaling_port = 8080
        self.backend = BackendDouble(self.netns.host_ip, self.backend_secret)
        self._processes: list[_Process] = []

    @property
    def signaling_url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://{self.netns.inner_ip}:{self.signaling_port}/spreed"

    @property
    def http_url(self) -> str:
        """The signaling server's HTTP base (backend API ``/api/v1/room/<token>``)."""
        return f"http://{self.netns.inner_ip}:{self.signaling_port}"

    @property
    def nextcloud_url(self) -> str:
        """The backend double's base URL, as configured in the signaling server."""
        return self.backend.url

    @property
    def backend_url(self) -> str:
        """The backend URL a hello names."""
        return self.backend.url + BACKEND_PATH

    def start(self) -> HpbStack:
        """Start everything and wait until each part answers.

        Raises:
            StackUnavailable: a binary is missing or a part did not come up (with its log).
        """
        signaling = signaling_binary()
        for tool in ("janus", "nats-server", "ip"):
            if (
                shutil.which(
                    tool,
                    path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]),
                )
                is None
            ):
                raise StackUnavailable(f"{tool} is missing: run {SETUP_SCRIPT}")
        self.netns.create()
        self.backend.start()
        try:
            self._spawn("nats", "nats-server", "-a", "127.0.0.1", "-p", "4222")
            self._wait_port("127.0.0.1", 4222, "nats")
            janus_dir = self._write_janus_config()
            self._spawn("janus", "janus", "-F", str(janus_dir), "-C", str(janus_dir / "janus.jcfg"))
            self._wait_port("127.0.0.1", 8188, "janus")
            config = self._write_signaling_config()
            self._spawn("signaling", signaling, "--config", str(config))
            self._wait_port(self.netns.inner_ip, self.signaling_port, "signaling")
            self._wait_mcu()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process, the backend double, and remove the namespace."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        self.backend.close()
        self.netns.delete()

    def post_in_call(
        self, room: str, changed: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> None:
        """Send the signed ``incall`` update Nextcloud sends when participants join or leave a call."""
        flags = max((u.get("inCall", 0) for u in changed), default=0)
        body = json.dumps(
            {"type": "incall", "incall": {"incall": flags, "changed": changed, "users": users}}
        )
        self._post_room(room, body.encode())

    def post_call_ended(self, room: str) -> None:
        """Send the signed update Nextcloud sends when the call ends for everyone."""
        body = json.dumps({"type": "incall", "incall": {"incall": 0, "all": True}})
        self._post_room(room, body.encode())

    def _post_room(self, room: str, body: bytes) -> None:
        headers = {
            **sign(self.backend_secret, body),
            "Spreed-Signaling-Backend": self.nextcloud_url,
            "Content-Type": "application/json",
        }
        response = httpx.post(
            f"{self.http_url}/api/v1/room/{room}", content=body, headers=headers, timeout=10
        )
        if response.is_error:
            raise StackUnavailable(
                f"backend request refused: {response.status_code} {response.text}"
            )

    def log_tail(self) -> str:
        """The end of every process's log."""
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self._processes)

    def _spawn(self, name: str, *argv: str) -> None:
        process = _Process(name, self.netns.command(*argv), self.workdir / f"{name}.log")
        process.start()
        self._processes.append(process)

    def _wait_port(self, host: str, port: int, name: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        probe = self.netns.command(
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(({host!r}, {port}), 1).close()",
        )
        while subprocess.run(probe, capture_output=True, check=False).returncode:
            failed = [p for p in self._processes if not p.alive()]
            if failed or time.monotonic() > deadline:
                raise StackUnavailable(f"{name} did not come up:\n{self.log_tail()}")
            time.sleep(0.2)

    def _wait_mcu(self) -> None:
        """The signaling server connects to Janus after it listens: wait for its log to say so."""
        deadline = time.monotonic() + _READY_TIMEOUT
        log = self.workdir / "signaling.log"
        while "Connected to Janus" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise StackUnavailable(f"signaling never connected to Janus:\n{self.log_tail()}")
            time.sleep(0.2)

    def _write_janus_config(self) -> Path:
        folder = self.workdir / "janus"
        folder.mkdir(exist_ok=True)
        lib = "/usr/lib/x86_64-linux-gnu/janus"
        (folder / "janus.jcfg").write_text(
            f"""general: {{
  configs_folder = "{folder}"
  plugins_folder = "{lib}/plugins"
  transports_folder = "{lib}/transports"
  events_folder = "{lib}/events"
  loggers_folder = "{lib}/loggers"
  debug_level = 4
  interface = "{self.netns.inner_ip}"
  admin_secret = "{secrets.token_hex(8)}"
}}
media: {{
  rtp_port_range = "20000-40000"
}}
nat: {{
  full_trickle = true
  ice_enforce_list = "{",".join((self.netns.inner_if, *self.ice_interfaces))}"
}}
plugins: {{
  disable = "{_DISABLED_PLUGINS}"
}}
transports: {{
  disable = "libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so"
}}
events: {{
  broadcast = false
}}
"""
        )
        (folder / "janus.transport.websockets.jcfg").write_text(
            """general: {
  json = "compact"
  ws = true
  ws_port = 8188
  ws_ip = "127.0.0.1"
  wss = false
}
admin: {
  admin_ws = false
}
"""
        )
        (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
        return folder

    def _write_signaling_config(self) -> Path:
        path = self.workdir / "signaling.conf"
        path.write_text(
            f"""[http]
listen = {self.netns.inner_ip}:{self.signaling_port}

[app]
debug = false

[sessions]
hashkey = {secrets.token_hex(16)}
blockkey = {secrets.token_hex(8)}

[clients]
internalsecret = {self.internal_secret}

[backend]
backends = nextcloud
allowall = false
timeout = 10
connectionsperhost = 8

[nextcloud]
url = {self.nextcloud_url}
secret = {self.backend_secret}

[nats]
url = nats://127.0.0.1:4222

[mcu]
type = janus
url = ws://127.0.0.1:8188
"""
        )
        return path
