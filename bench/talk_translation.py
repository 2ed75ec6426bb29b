"""Caption-to-translation delay of Talk live translation, with a provider that takes 300 ms.

One call, in process: the Talk gateway's rooms (tiny in-process Paraformer, aiortc receivers) joined
to the protocol-faithful signaling double; one speaker streams speech-like audio in real time (a
2 s utterance, then 3 s of silence, repeated); bob asked for captions, carol for French. Nextcloud's
TaskProcessing is the test double, whose provider finishes each task 300 ms after it was scheduled;
the gateway schedules and polls it over HTTP (ASGI, no network) as it would Nextcloud.

The delay of a final is attributed to that final: from the moment bob's session receives the
original final to the moment carol's receives its translation, both read from the signaling
double's inboxes every 2 ms. Each run also reports how many TaskProcessing polls a
translation took. Runs once per poll interval (``EARSHOT_TALK_TRANSLATION_POLL_SECONDS``).

Usage: ``python -m bench.talk_translation [--polls 0.05 0.2] [--utterances 8]``.
Writes ``bench/reports/talk_translation.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from bench.quantiles import percentiles_ms
from earshot.engines import loading
from earshot.gateways.talk import messages
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.settings import Settings
from tests.hpb_double import Session, SignalingDouble, eventually, running_double
from tests.talk_exapp import APP_SECRET, NextcloudDouble
from tests.talk_media import RATE, PlayedTrack, syllables
from tests.taskprocessing_double import TaskProcessingDouble

SECRET = "bench-internal-secret"
NEXTCLOUD = "http://127.0.0.1:9"
ROOM = "benchroom"
PROVIDER_SECONDS = 0.3
REPORT = Path(__file__).parent / "reports" / "talk_translation.md"


@dataclass(frozen=True, slots=True)
class Result:
    poll_seconds: float
    finals: int
    translated: int
    delays: list[float]
    polls_per_translation: float


class Stamped:
    """Records when each transcript message reaches a participant's inbox."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seen: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> None:
        inbox = [m for m in self.session.inbox if m.get("type") == "transcript"]
        now = time.perf_counter()
        self.seen += [(now, m) for m in inbox[len(self.seen) :]]


async def publish(
    double: SignalingDouble, speaker: Session, audio: np.ndarray
) -> RTCPeerConnection:
    await eventually(lambda: bool(speaker.inbox), 20, what="the gateway's requestoffer")
    [bot] = double.clients()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(PlayedTrack(audio, layout="stereo"))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"type": "offer", "sdp": pc.localDescription.sdp}
    data = {
        "to": bot.session_id,
        "type": "offer",
        "roomType": "video",
        "sid": "s1",
        "payload": offer,
    }
    await double.send_from(speaker, bot.session_id, data)
    await eventually(lambda: any(m["type"] == "answer" for m in speaker.inbox), 20, what="answer")
    answer = next(m for m in speaker.inbox if m["type"] == "answer")
    await pc.setRemoteDescription(RTCSessionDescription(answer["payload"]["sdp"], "answer"))
    return pc


async def watch(stamps: list[Stamped], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for stamp in stamps:
            stamp.poll()
        await asyncio.sleep(0.002)


async def measure(poll_seconds: float, utterances: int, cache: Path) -> Result:
    recognizer = await loading.open_recognizer(Settings(cache_dir=cache))
    provider = TaskProcessingDouble(APP_SECRET, delay=PROVIDER_SECONDS)
    async with running_double(secret=SECRET, backend=NEXTCLOUD) as double:
        double.rooms.add(ROOM)
        settings = TalkSettings(
            hpb_url=double.url,
            internal_secret=SECRET,
            nextcloud_url=NEXTCLOUD,
            app_secret=APP_SECRET,
            languages=("en",),
            translation_poll_seconds=poll_seconds,
        )
        nextcloud = Nextcloud(
            settings, transport=NextcloudDouble(taskprocessing=provider).transport()
        )
        rooms = Rooms(settings, recognizer, translator=nextcloud.task_processing())
        alice = double.participant(ROOM, "alice", in_call=messages.IN_CALL | messages.WITH_AUDIO)
        bob, carol = (
            double.participant(ROOM, n, in_call=messages.IN_CALL) for n in ("bob", "carol")
        )
        stamps = [Stamped(bob), Stamped(carol)]
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stamps, stop))
        try:
            await rooms.transcribe(ROOM, "nc-bob", enable=True, lang="en")
            await rooms.transcribe(ROOM, "nc-carol", enable=True, lang="en", translate_to="fr")
            one = np.concatenate([syllables(2.0), np.zeros(RATE * 3, np.float32)])
            pc = await publish(double, alice, np.tile(one, utterances))
            await asyncio.sleep(5.0 * utterances + 3.0)
            await pc.close()
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await watcher
            await rooms.aclose()
            await nextcloud.aclose()
            await recognizer.aclose()
    originals = [(t, m) for t, m in stamps[0].seen if m["final"]]
    translations = stamps[1].seen
    # One worker per language translates finals in order: the i-th translation is of the i-th
    # final (the repeated utterance makes equal texts, so order, not text, pairs them).
    delays = []
    for (at, translated), (source, final) in zip(translations, originals, strict=False):
        assert translated["message"] == f"[fr] {final['message']}", (translated, final)
        delays.append(at - source)
    polls = provider.polls / max(len(provider.tasks), 1)
    return Result(poll_seconds, len(originals), len(translations), delays, polls)


def report(results: list[Result], load: str) -> str:
    lines = [
        "# Talk live translation: caption-to-translation delay",
        "",
        "`python -m bench.talk_translation` — the Talk gateway's rooms in process (tiny Paraformer,",
        "aiortc), the signaling double, and the TaskProcessing double whose provider takes"
        f" {PROVIDER_SECONDS * 1000:.0f} ms",
        "per task. One speaker, 2 s utterances and 3 s pauses; per final: from the original final",
        "reaching a captions participant to its French translation reaching the participant who",
        "chose French (both read from the signaling double's inboxes every 2 ms).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python"
        f" {platform.python_version()}; load average when run: {load}.",
        "",
        "| poll interval (s) | finals | translated | median (ms) | p95 (ms) | max (ms) "
        "| polls per translation | median - provider (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        p50, p95, p100 = percentiles_ms(r.delays, (50, 95, 100))
        lines.append(
            f"| {r.poll_seconds:g} | {r.finals} | {r.translated} | {p50:.0f} | {p95:.0f} "
            f"| {p100:.0f} | {r.polls_per_translation:.1f} | {p50 - PROVIDER_SECONDS * 1000:.0f} |"
        )
    lines += [
        "",
        "The provider's 300 ms is the floor; the rest is scheduling, polling (a translation is seen"
        " at the first poll after the provider finished) and sending.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--polls", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/earshot/bench-tiny")
    args = parser.parse_args()
    results = []
    for poll in args.polls:
        result = await measure(poll, args.utterances, args.cache)
        print(result.poll_seconds, result.finals, result.translated, percentiles_ms(result.delays))
        results.append(result)
    REPORT.write_text(report(results, " ".join(f"{x:.2f}" for x in os.getloadavg())))
    print(f"written: {REPORT}")


if __name__ == "__main__":
    asyncio.run(main())
