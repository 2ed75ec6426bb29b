"""Memory and CPU per active Talk speaker, with the tiny in-process engine.

Runs ``earshot talk`` (the real ExApp: signaling client, aiortc receivers, Opus decoding,
downmixing, resampling, one recogniser stream per speaker) as its own process against the
protocol-faithful signaling double of the unit tests. The bench process plays the N speakers: each
answers the gateway's ``requestoffer`` with an aiortc offer and streams speech-like audio in real
time (Opus, 48 kHz stereo), as Janus would relay it. For each N it reports, for the gateway process
only:

* RSS per speaker: (RSS with N speakers after the measuring window - RSS idle with the engine
  loaded) / N;
* CPU per speaker: gateway CPU seconds over the window / window seconds / N, in % of one core;
* captions delivered to the one participant who asked for them, and frames dropped.

Usage: ``python -m bench.talk_speakers [--speakers 1 4 8 16] [--seconds 20]``.
Writes ``bench/reports/talk_speakers.md``. The seed figure to beat is 100 MB per speaker (the
system earshot replaces); the target is under 20 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from bench import procstats
from tests.hpb_double import Session, SignalingDouble, eventually, running_double
from tests.servers import free_port
from tests.talk_media import RATE, PlayedTrack, syllables

SECRET = "bench-internal-secret"
APP_SECRET = "bench-app-secret"
NEXTCLOUD = "http://127.0.0.1:9"
ROOM = "benchroom"
SPEAKS = 1 | 2
REPORT = Path(__file__).parent / "reports" / "talk_speakers.md"


@dataclass(frozen=True, slots=True)
class Result:
    speakers: int
    rss_per_speaker_mb: float
    cpu_per_speaker_pct: float
    idle_rss_mb: float
    captions: int
    dropped: int


def speech(seconds: float) -> np.ndarray:
    """Speech-like audio: 3 s of voice then 1.5 s of pause, repeated (segments end and start)."""
    phrase = np.concatenate([syllables(3.0), np.zeros(int(1.5 * RATE), np.float32)])
    return np.tile(phrase, int(seconds / 4.5) + 1)


def headers() -> dict[str, str]:
    token = base64.b64encode(f"bench:{APP_SECRET}".encode()).decode()
    return {
        "AA-VERSION": "3.0.0",
        "EX-APP-ID": "live_transcription",
        "EX-APP-VERSION": "0.1.0",
        "AUTHORIZATION-APP-API": token,
    }


async def start_gateway(double: SignalingDouble, port: int) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "LT_HPB_URL": double.url,
        "LT_INTERNAL_SECRET": SECRET,
        "NEXTCLOUD_URL": NEXTCLOUD,
        "APP_SECRET": APP_SECRET,
        "APP_HOST": "127.0.0.1",
        "APP_PORT": str(port),
        "EARSHOT_TALK_MEMORY_LIMIT_MB": "100000",
        "EARSHOT_LOG_LEVEL": "warning",
        "EARSHOT_DEMO_MODEL": "true",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "earshot", "talk", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/heartbeat")).status_code == 200:
                    return process
            if time.monotonic() > deadline or process.returncode is not None:
                raise RuntimeError("the gateway did not start")
            await asyncio.sleep(0.2)


async def publish(double: SignalingDouble, speaker: Session, seconds: float) -> RTCPeerConnection:
    """Answer the gateway's requestoffer with this speaker's audio, as Janus would."""
    await eventually(
        lambda: any(m["type"] == "requestoffer" for m in speaker.inbox), 30, what="a requestoffer"
    )
    [bot] = double.clients()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(PlayedTrack(speech(seconds), layout="stereo"))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"type": "offer", "sdp": pc.localDescription.sdp}
    data = {"type": "offer", "roomType": "video", "sid": speaker.session_id, "payload": offer}
    await double.send_from(speaker, bot.session_id, data)
    await eventually(
        lambda: any(m["type"] == "answer" for m in speaker.inbox), 30, what="an answer"
    )
    answer = next(m for m in speaker.inbox if m["type"] == "answer")
    await pc.setRemoteDescription(RTCSessionDescription(answer["payload"]["sdp"], "answer"))
    return pc


async def measure(n: int, seconds: float, warmup: float) -> Result:
    async with running_double(secret=SECRET, backend=NEXTCLOUD) as double:
        double.rooms.add(ROOM)
        viewer = double.participant(ROOM, "viewer", in_call=1)
        speakers = [double.participant(ROOM, f"s{i}", in_call=SPEAKS) for i in range(n)]
        port = free_port()
        gateway = await start_gateway(double, port)
        pcs: list[RTCPeerConnection] = []
        try:
            await asyncio.sleep(2)
            idle = procstats.read(gateway.pid)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                body = {"roomToken": ROOM, "ncSessionId": "nc-viewer", "enable": True}
                response = await http.post("/api/v1/call/transcribe", json=body, headers=headers())
                response.raise_for_status()
                pcs = list(
                    await asyncio.gather(
                        *(publish(double, s, seconds + warmup + 10) for s in speakers)
                    )
                )
                await asyncio.sleep(warmup)
                before, started = procstats.read(gateway.pid), time.monotonic()
                await asyncio.sleep(seconds)
                after, wall = procstats.read(gateway.pid), time.monotonic() - started
                status = (await http.get("/api/v1/status", headers=headers())).json()
        finally:
            for pc in pcs:
                await pc.close()
            gateway.terminate()
            await gateway.wait()
    room = status["rooms"][0]
    return Result(
        speakers=n,
        rss_per_speaker_mb=(after.rss_bytes - idle.rss_bytes) / n / 2**20,
        cpu_per_speaker_pct=100 * (after.cpu_seconds - before.cpu_seconds) / wall / n,
        idle_rss_mb=idle.rss_bytes / 2**20,
        captions=sum(1 for m in viewer.inbox if m["type"] == "transcript"),
        dropped=room["framesDropped"],
    )


def report(results: list[Result], seconds: float) -> str:
    lines = [
        "# Talk gateway: memory and CPU per active speaker",
        "",
        "`python -m bench.talk_speakers` — `earshot talk` (tiny in-process Paraformer) as its own",
        "process; N speakers stream Opus 48 kHz stereo speech-like audio in real time through aiortc,",
        "relayed by the signaling double. Gateway process only. "
        f"Measuring window {seconds:.0f} s after a warm-up.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}.",
        "",
        "| speakers | RSS per speaker (MB) | CPU per speaker (% of a core) | idle RSS (MB) "
        "| captions to the viewer | frames dropped |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.speakers} | {r.rss_per_speaker_mb:.1f} | {r.cpu_per_speaker_pct:.1f} "
            f"| {r.idle_rss_mb:.0f} | {r.captions} | {r.dropped} |"
        )
    lines += [
        "",
        "Seed figure to beat: 100 MB per speaker (the system earshot replaces); target: under 20 MB.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    results = []
    for n in args.speakers:
        result = await measure(n, args.seconds, args.warmup)
        print(result, flush=True)
        results.append(result)
    REPORT.write_text(report(results, args.seconds))
    print(f"written: {REPORT}")


if __name__ == "__main__":
    asyncio.run(main())
