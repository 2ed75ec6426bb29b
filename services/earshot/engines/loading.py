"""Choose and open the recogniser a process is configured for, by engine name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from earshot.engines import batching, paraformer
from earshot.engines.recognizers import Recognizer
from earshot.settings import Settings


async def _in_process_paraformer(settings: Settings) -> Recognizer:
    # Loading builds the tiny model on first use and parses ONNX files: keep it off the event loop.
    decoder = await asyncio.to_thread(paraformer.load_paraformer, settings)
    return batching.BatchingRecognizer.from_settings(decoder, settings)


_OPENERS: dict[str, Callable[[Settings], Awaitable[Recognizer]]] = {
    "paraformer": _in_process_paraformer,
}


async def open_recognizer(settings: Settings) -> Recognizer:
    """Open the recogniser named by ``settings.engine``; the caller must ``aclose()`` it."""
    try:
        opener = _OPENERS[settings.engine]
    except KeyError:
        known = ", ".join(sorted(_OPENERS))
        raise ValueError(f"unknown engine {settings.engine!r}; known engines: {known}") from None
    return await opener(settings)
