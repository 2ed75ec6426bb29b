"""Choose and open the recogniser a process is configured for, by engine name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from earshot.engines import batching, paraformer, stepping, windowing
from earshot.engines.recognizers import Recognizer
from earshot.settings import Settings


class NoModelConfigured(Exception):
    """A server was started with no model, no Triton and without asking for the demo model."""


def require_model(settings: Settings) -> None:
    """Refuse a server that would quietly recognise with the random-weight tiny model.

    Every server entry point calls this before it opens anything (``earshot serve``, ``earshot
    talk``: the Talk ExApp as AppAPI installs it). A model directory given explicitly is used as
    given (a missing file is its own error when it is loaded).

    Raises:
        NoModelConfigured: with the one-line reason and what to do.
    """
    if settings.model_dir is None and not settings.triton_url and not settings.demo_model:
        raise NoModelConfigured(
            "no model configured: set EARSHOT_MODEL_DIR (MODEL_PATH) to a model directory "
            "(`earshot models fetch` downloads one) or EARSHOT_TRITON_URL; for the tiny "
            "random-weight model, which makes up words, pass --demo-model or set "
            "EARSHOT_DEMO_MODEL=true"
        )


async def _in_process_paraformer(settings: Settings) -> Recognizer:
    # Loading builds the tiny model on first use and parses ONNX files: keep it off the event loop.
    decoder = await asyncio.to_thread(paraformer.load_paraformer, settings)
    # sherpa decodes 0.6 s windows: audio goes to the workers once per window, not per frame.
    recognizer = batching.BatchingRecognizer.from_settings(
        decoder, settings, window=windowing.SHERPA_PARAFORMER
    )
    # Warm, and the cost of a stream known before the first caller (the load limit reads it).
    try:
        await recognizer.warm_up()
    except BaseException:
        await recognizer.aclose()
        raise
    return recognizer


async def _in_process_kyutai(settings: Settings) -> Recognizer:
    # Imported here: torch and moshi come with the kyutai extra, which a paraformer-only install lacks.
    from earshot.engines import kyutai

    options = kyutai.KyutaiOptions(
        max_streams=settings.kyutai_max_streams,
        pause_seconds=settings.kyutai_pause_seconds,
        pause_threshold=settings.kyutai_pause_threshold,
    )
    decoder = await asyncio.to_thread(
        kyutai.load_kyutai,
        model_dir=settings.model_dir,
        cache_dir=settings.cache_dir,
        device=settings.kyutai_device,
        options=options,
    )
    # Every step computes all slots: a clock steps them together, once per 80 ms frame.
    return stepping.SteppingRecognizer(decoder)


_OPENERS: dict[str, Callable[[Settings], Awaitable[Recognizer]]] = {
    "paraformer": _in_process_paraformer,
    "kyutai": _in_process_kyutai,
}


async def _triton(settings: Settings) -> Recognizer:
    # Imported here: tritonclient and grpc come with the triton extra.
    from earshot.engines import triton

    return triton.TritonRecognizer(
        settings.triton_url,
        engine=settings.engine,
        keepalive_seconds=settings.triton_keepalive_seconds,
        request_timeout_seconds=settings.triton_request_timeout_seconds,
        reconnect_timeout_seconds=settings.triton_reconnect_timeout_seconds,
    )


async def open_recognizer(settings: Settings) -> Recognizer:
    """Open the recogniser named by ``settings.engine``: on Triton when ``triton_url`` is set,
    in process otherwise. The caller must ``aclose()`` it."""
    if settings.triton_url:
        return await _triton(settings)
    try:
        opener = _OPENERS[settings.engine]
    except KeyError:
        known = ", ".join(sorted(_OPENERS))
        raise ValueError(f"unknown engine {settings.engine!r}; known engines: {known}") from None
    return await opener(settings)
