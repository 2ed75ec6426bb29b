"""Fixtures every test shares: the leaked-task check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

#: grpc.aio's own task that handles a cancelled call's status: grpc makes and ends it (at a moment
#: of its poller's choosing, after the channel was closed), so no code of ours owns it.
_GRPC_STATUS_TASK = "_handle_status_once_received"


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running: every task must have an owner that stops it."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    me = asyncio.current_task()
    leaked = [
        t
        for t in asyncio.all_tasks() - before
        if not t.done() and t is not me and _GRPC_STATUS_TASK not in repr(t)
    ]
    assert not leaked, f"tasks leaked by the test: {leaked}"


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("earshot-cache")
