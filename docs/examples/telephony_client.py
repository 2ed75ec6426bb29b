"""A small telephony client for earshot: stream a WAV file as A-law and print what comes back.

    pip install websockets numpy g711
    python telephony_client.py ws://HOST:PORT/ws/transcribe/SESSION call.wav --token TOKEN

The WAV must be 16-bit PCM at 8 kHz (mono; other channels are averaged). The client sends 20 ms
frames in real time (``--speed 0``: as fast as possible), prints partials and finals, waits for
the last final before it closes, and reconnects with backoff when the connection drops or the
gateway says ``retryable``: the same session id continues its numbering. See telephony-clients.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import wave

import g711
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

RATE = 8000
FRAME_MS = 20
LAST_FINAL_WAIT_SECONDS = 10.0
# The last final is the last once nothing more comes for this long: a gateway behind the client
# (audio sent faster than real time) says a segment's final before the next one's first partial.
SETTLE_SECONDS = 1.5
MAX_ATTEMPTS = 5


class Refused(Exception):
    """The gateway refused the stream for good (a code that is not retryable)."""


def alaw_frames(path: str) -> list[bytes]:
    """The WAV's audio as A-law frames of FRAME_MS, followed by 2 s of silence (which lets the
    gateway end the last segment while we still listen)."""
    with wave.open(path, "rb") as wav:
        if (wav.getsampwidth(), wav.getframerate()) != (2, RATE):
            raise SystemExit(f"{path}: a 16-bit PCM WAV at {RATE} Hz is needed")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        samples = pcm.reshape(-1, wav.getnchannels()).mean(axis=1) / 32768.0
    audio = g711.encode_alaw(np.concatenate([samples, np.zeros(2 * RATE)]).astype(np.float32))
    size = RATE * FRAME_MS // 1000
    return [audio[i : i + size] for i in range(0, len(audio), size)]


Heard = list[tuple[dict[str, object], float]]  # the last message and when it came


async def listen(ws: ClientConnection, last: Heard) -> None:
    """Print every message; keep the last one (the sender waits for it to be a final).

    Returns when the connection ends (normally or not: the caller reconnects if frames are left).
    """
    with contextlib.suppress(ConnectionClosed):
        await _print_messages(ws, last)


async def _print_messages(ws: ClientConnection, last: Heard) -> None:
    async for raw in ws:
        message = json.loads(raw)
        last[:] = [(message, time.monotonic())]
        if message["type"] == "partial":
            print(f"  ... {message['seq']}: {message['text']}", flush=True)
        elif message["type"] == "final":
            print(f"final {message['seq']}: {message['text']}", flush=True)
        else:
            print(f"error {message['code']}: {message['message']}", file=sys.stderr, flush=True)
            if not message.get("retryable"):
                raise Refused(message["code"])


def _settled(last: Heard) -> bool:
    """Whether the last message is a final, with nothing after it for SETTLE_SECONDS."""
    return (
        bool(last)
        and last[0][0]["type"] == "final"
        and time.monotonic() - last[0][1] > SETTLE_SECONDS
    )


async def send(url: str, token: str | None, frames: list[bytes], start: int, speed: float) -> int:
    """Send frames from ``start``; return how many were sent in all when the connection ended."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    sent = start
    last: Heard = []
    async with connect(url, additional_headers=headers) as ws:
        listener = asyncio.create_task(listen(ws, last))
        try:
            for frame in frames[start:]:
                if listener.done():
                    break
                await ws.send(frame)
                sent += 1
                await asyncio.sleep(FRAME_MS / 1000 / speed if speed > 0 else 0)
            # The stream ends when we close: wait (a little) for the last final first.
            for _ in range(int(LAST_FINAL_WAIT_SECONDS * 10)):
                if listener.done() or _settled(last):
                    break
                await asyncio.sleep(0.1)
            await ws.close()
        except ConnectionClosed:
            pass
        finally:
            if not listener.done():
                listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if listener.done() and not listener.cancelled() and listener.exception():
            raise listener.exception()  # type: ignore[misc]
    return sent


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws(s)://HOST:PORT/ws/transcribe/SESSION (or the ENDPOINT)")
    parser.add_argument("wav", help="16-bit PCM WAV at 8 kHz")
    parser.add_argument("--token", help="the session's access token (sent as a Bearer header)")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time; 0: no pacing")
    args = parser.parse_args()
    frames = alaw_frames(args.wav)
    sent = 0
    for attempt in range(MAX_ATTEMPTS):
        try:
            sent = await send(args.url, args.token, frames, sent, args.speed)
        except Refused as refused:
            print(f"refused: {refused}", file=sys.stderr)
            return 1
        except InvalidStatus as exc:
            print(f"the gateway answered HTTP {exc.response.status_code}", file=sys.stderr)
            return 1
        except (OSError, ConnectionClosed) as exc:
            print(f"connection lost: {exc}; reconnecting", file=sys.stderr)
        if sent >= len(frames):
            return 0
        await asyncio.sleep(min(2**attempt, 30))  # then continue where the stream broke off
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
