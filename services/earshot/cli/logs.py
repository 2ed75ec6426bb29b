"""Logging of the server commands: text for people or one JSON object per line, plus LOG_DIR."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from earshot.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "earshot.log"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(settings: Settings) -> None:
    """Send logs to stderr (and ``<log_dir>/earshot.log``) in the configured format and level.

    Raises:
        OSError: the log directory cannot be created or written.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_dir / LOG_FILE, encoding="utf-8"))
    formatter = JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level.upper(), handlers=handlers, force=True)
    # The servers give uvicorn log_config=None, so its loggers propagate to these handlers.
