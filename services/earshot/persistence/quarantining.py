"""Moving what does not belong in a spool out of the way, so that it harms nothing.

A spool holds stream directories and, in each, the files :mod:`earshot.persistence.spool` names.
Anything else (a stray file, a segment name that is not a number, an acknowledgement that does not
parse, a directory where a segment file should be) is moved into ``<spool_dir>/.quarantine/`` with
a log line and ``earshot_spool_quarantined_total``: it stops neither the writer nor the drainer, and
an operator can look at it later. Names starting with a dot (streams being built, temporary files,
the quarantine itself) are left alone. Blocking file I/O: call it from a thread.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from earshot import metrics
from earshot.persistence import spool

log = logging.getLogger(__name__)

QUARANTINE_DIR = ".quarantine"
_STREAM_FILES = {spool.WRITER_LOCK, spool.DRAIN_LOCK}


def tidy(spool_dir: Path) -> int:
    """Quarantine every unexpected entry of the spool; returns how many were moved."""
    moved = 0
    for entry in _entries(spool_dir):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir(follow_symlinks=False):
            moved += quarantine(spool_dir, Path(entry.path), "not a stream directory")
            continue
        for inner in _entries(Path(entry.path)):
            why = _unexpected(inner)
            if why is not None:
                moved += quarantine(spool_dir, Path(inner.path), why)
    return moved


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as found:
            return list(found)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unexpected(entry: os.DirEntry[str]) -> str | None:
    """Why a stream directory's entry does not belong there; None when it does."""
    name = entry.name
    if name.startswith("."):
        return None
    regular = entry.is_file(follow_symlinks=False)
    if name in _STREAM_FILES or spool.segment_number(name) is not None:
        return None if regular else "not a regular file"
    if name == spool.ACK_FILE:
        if not regular:
            return "not a regular file"
        try:
            text = Path(entry.path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return "acknowledgement unreadable"
        return None if spool.parse_ack(text) is not None else "acknowledgement malformed"
    return "not a spool file"


def quarantine(spool_dir: Path, path: Path, why: str) -> int:
    """Move ``path`` into the quarantine with a log line and a metric; 1 if moved, else 0."""
    target_dir = spool_dir / QUARANTINE_DIR
    relative = path.relative_to(spool_dir)
    target = target_dir / f"{'__'.join(relative.parts)}.{time.time_ns()}"
    try:
        target_dir.mkdir(exist_ok=True)
        path.rename(target)
    except FileNotFoundError:
        return 0  # gone meanwhile, or quarantined by the other process sharing the spool
    except OSError as exc:
        log.error("spool %s: %s (%s) cannot be quarantined: %s", spool_dir, relative, why, exc)
        return 0
    metrics.SPOOL_QUARANTINED.inc()
    log.warning("spool %s: %s quarantined as %s: %s", spool_dir, relative, target, why)
    return 1
