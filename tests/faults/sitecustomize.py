"""Faults a test injects into a real process: on its PYTHONPATH, Python imports this at start.

Nothing happens unless ``EARSHOT_TEST_FAULTS`` names a folder (tests/integration/test_liveness.py
sets it for the gateway only). Then:

* SIGUSR2 blocks the main thread, which runs the event loop, for an hour: a handler that never
  returns, while the process and its other threads stay up.
* While ``<folder>/disk-hung`` exists, ``os.fsync`` does not return: a disk that stopped answering
  (a hung NFS server). It touches ``<folder>/fsync-waiting`` when a call starts waiting.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import HasFileno

FOLDER = os.environ.get("EARSHOT_TEST_FAULTS")


def _block_forever(signum: int, frame: FrameType | None) -> None:
    time.sleep(3600)


def _install(folder: Path) -> None:
    signal.signal(signal.SIGUSR2, _block_forever)
    real_fsync = os.fsync

    def fsync(fd: int | HasFileno) -> None:
        if (folder / "disk-hung").exists():
            (folder / "fsync-waiting").touch()
            while (folder / "disk-hung").exists():
                time.sleep(0.1)
        real_fsync(fd)

    os.fsync = fsync


if FOLDER:
    _install(Path(FOLDER))
