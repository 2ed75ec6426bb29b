"""Opening the configured recogniser by engine name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from earshot.engines import loading
from earshot.settings import Settings


@pytest.mark.parametrize(("engine", "rate"), [("paraformer", 16000), ("kyutai", 24000)])
async def test_engine_setting_opens_that_in_process_engine(
    engine: str, rate: int, tiny_model_cache: Path
) -> None:
    settings = Settings(engine=engine, cache_dir=tiny_model_cache)
    recognizer = await loading.open_recognizer(settings)
    try:
        assert (recognizer.name, recognizer.sample_rate) == (engine, rate)
        stream = recognizer.open_stream()
        await stream.accept(np.zeros(rate // 10, dtype=np.float32))
        assert await stream.finish() == []  # silence says nothing
    finally:
        await recognizer.aclose()


def test_unknown_engine_is_a_start_up_error() -> None:
    with pytest.raises(ValidationError, match="'paraformer' or 'kyutai'"):
        Settings(engine="whisper")
