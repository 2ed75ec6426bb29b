"""``earshot models fetch`` and the demo's download: the real model with a progress bar."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from earshot.cli.errors import CliError
from earshot.engines import model_fetching
from earshot.engines.tiny_paraformer import ParaformerFiles

REAL_URL = model_fetching.REAL_URL


def fetch(
    dest: Path,
    console: Console,
    *,
    url: str = REAL_URL,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> ParaformerFiles:
    """Fetch the published streaming Paraformer into ``dest``, showing progress and the checksum.

    Raises:
        CliError: the download failed; its cause says whether the network is unreachable.
    """
    with Progress(
        *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=console
    ) as progress:
        task = progress.add_task("downloading the model", total=None)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        def checked(digest: str) -> None:
            what = "matches the pinned" if sha256 else "of the download:"
            progress.console.print(f"SHA-256 {what} {digest}")

        try:
            return model_fetching.fetch_paraformer(
                dest, url=url, sha256=sha256, progress=report, on_checked=checked, timeout=timeout
            )
        except model_fetching.ModelFetchError as exc:
            raise _fetch_error(exc, url) from None


def _fetch_error(exc: model_fetching.ModelFetchError, url: str) -> CliError:
    if isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
        host = httpx.URL(url).host
        return CliError(
            f"offline: cannot reach {host} ({exc.__cause__})",
            "check the network or the proxy (HTTPS_PROXY), or copy the model and set "
            "EARSHOT_MODEL_DIR",
        )
    return CliError(
        f"cannot fetch the model: {exc}", "run it again; a partial download is never kept"
    )
