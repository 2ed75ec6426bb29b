"""A telephony client to run inside the cluster's namespace, the way a caller's system would.

``ip netns exec <namespace> python -m tests.cluster.session_client URL [--token T]`` streams the
bundled A-law sample (``--repeat`` times, then trailing silence) at ``--speed`` times real time
and prints every server message as one JSON line, then ``{"type": "closed", ...}`` per connection.
With ``--reconnect`` a connection that drops before everything was sent is opened again with the
same URL (the session id), or with ``--reconnect-url`` (the same session through another address,
e.g. its pool's Service after a first connection straight to one pod), and the rest of the audio
follows: what a client does when its gateway pod is replaced. Each ``closed`` line names the URL
of its connection. Names resolve through the cluster's DNS (``ip netns exec`` gives the process
the namespace's resolv.conf).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidURI

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.gateways.g711 import client

FRAME_SECONDS = 0.02


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _frames(repeat: int) -> list[bytes]:
    audio = streaming.with_trailing_silence(demoing.sample_audio() * repeat, Codec.ALAW, 8000)
    return client.frames_of(audio, codec=Codec.ALAW, rate=8000, frame_ms=20)


async def _run(args: argparse.Namespace) -> int:
    frames = _frames(args.repeat)
    sent = 0
    deadline = time.monotonic() + args.reconnect_for
    urls = itertools.chain([args.url], itertools.repeat(args.reconnect_url or args.url))
    while True:
        base, url = sent, next(urls)

        def count(done: int, base: int = base) -> None:
            nonlocal sent
            sent = base + done

        try:
            result = await client.stream(
                url,
                frames[sent:],
                frame_seconds=FRAME_SECONDS,
                speed=args.speed,
                token=args.token or None,
                on_message=lambda message: _say(dict(message)),
                on_frame_sent=count,
                linger=args.linger,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
            _say({"type": "connect_failed", "error": str(error), "sent": sent, "url": url})
            if not args.reconnect or time.monotonic() > deadline:
                return 1
            await asyncio.sleep(0.5)
            continue
        _say(
            {
                "type": "closed",
                "code": result.close_code,
                "reason": result.close_reason,
                "sent": sent,
                "total": len(frames),
                "url": url,
            }
        )
        if not args.reconnect or sent >= len(frames) or result.close_code == 1008:
            return 0
        if time.monotonic() > deadline:
            return 1
        if result.close_code == 1013:  # e.g. the old pod still holds the session: back off
            await asyncio.sleep(0.5)


def main(argv: list[str]) -> int:
    """Parse ``argv`` and stream; 0 when every connection ended, 1 when one could not be made."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.session_client")
    parser.add_argument("url", help="ws://<gateway Service>.<namespace>.svc:8000/ws/transcribe/ID")
    parser.add_argument("--token", default="", help="the session's access token (Bearer)")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (0: unpaced)")
    parser.add_argument("--repeat", type=int, default=1, help="send the sample this many times")
    parser.add_argument("--linger", type=float, default=20.0, help="seconds to wait for a final")
    parser.add_argument("--reconnect", action="store_true", help="reopen a dropped connection")
    parser.add_argument("--reconnect-url", default="", help="reopen it here (default: url)")
    parser.add_argument("--reconnect-for", type=float, default=180.0, help="give up after (s)")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
