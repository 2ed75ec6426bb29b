"""``earshot models fetch``: download the real model with a progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from earshot.engines import model_fetching


def fetch(dest: Path, console: Console) -> None:
    """Fetch the published streaming Paraformer into ``dest`` and say where it is."""
    with Progress(
        *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=console
    ) as progress:
        task = progress.add_task("downloading", total=None)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        files = model_fetching.fetch_paraformer(dest, progress=report)
    console.print(f"model ready in {files.encoder.parent}")
    console.print(f"use it with: EARSHOT_MODEL_DIR={files.encoder.parent} earshot serve")
