"""The DEBUG audio dump: each connection's received audio as a WAV file, for listening back.

Off unless ``EARSHOT_DEBUG_AUDIO_DIR`` is set. One file per connection,
``<dir>/<session id>-<UTC time>.wav``: 16-bit mono PCM at the client's rate, decoded from what the
client sent (frames refused or skipped as undecodable are not in it). A failing dump is logged
once and turned off for that connection: it never ends a stream.
"""

from __future__ import annotations

import logging
import wave
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from earshot.audio import codecs
from earshot.events import SessionId

log = logging.getLogger(__name__)


class AudioDump:
    """A WAV file being written for one connection."""

    def __init__(self, path: Path, *, codec: codecs.Codec, rate: int) -> None:
        self.path = path
        self._codec = codec
        self._wav: wave.Wave_write | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(str(path), "wb")  # noqa: SIM115 (open for the connection's life)
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate)
        except OSError as exc:
            log.warning("debug audio dump %s cannot be written: %s", path, exc)
            self._wav = None

    @classmethod
    def for_connection(
        cls, folder: Path, session_id: SessionId, *, codec: codecs.Codec, rate: int
    ) -> AudioDump:
        """A new dump in ``folder`` named after the session and the time the connection began."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return cls(folder / f"{session_id}-{stamp}.wav", codec=codec, rate=rate)

    def write(self, chunk: bytes) -> None:
        """Append one decodable chunk as it was received."""
        if self._wav is None:
            return
        samples = codecs.decode(chunk, self._codec)
        pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
        try:
            self._wav.writeframes(pcm.tobytes())
        except OSError as exc:
            log.warning("debug audio dump %s stopped: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        """Finish the WAV header; idempotent."""
        if self._wav is None:
            return
        wav, self._wav = self._wav, None
        try:
            wav.close()
        except OSError as exc:
            log.warning("debug audio dump %s cannot be closed: %s", self.path, exc)
