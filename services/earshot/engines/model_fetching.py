"""Downloads, checks and unpacks the published streaming Paraformer model.

May do: HTTP GET with httpx, write inside the destination's parent directory. Must not: load a
model, run inference, use asyncio (the CLI calls :func:`fetch_paraformer` before any loop runs).

The real archive is sherpa-onnx's release asset below (about 1 GB; it unpacks to a folder with
``encoder.int8.onnx``, ``decoder.int8.onnx``, ``tokens.txt``, the fp32 graphs and test waves).
Its size and SHA-256 are not published next to it, so by default the download is checked against
the server's ``Content-Length`` only; pass ``expected_size`` and ``sha256`` to pin a known copy.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from earshot.engines.tiny_paraformer import ModelFilesMissing, ParaformerFiles

REAL_URL = (
    "https://github.com/k2-fsa/sherpa-onnx/releases/download/asr-models/"
    "sherpa-onnx-streaming-paraformer-bilingual-zh-en.tar.bz2"
)

Progress = Callable[[int, int | None], None]
"""Called with the bytes received so far and the total, when the server said it."""

_CHUNK_BYTES = 1 << 20


class ModelFetchError(Exception):
    """The model could not be fetched: HTTP error, wrong size or checksum, bad or incomplete archive.

    Nothing is left at the destination when it is raised.
    """


def fetch_paraformer(
    dest: Path,
    *,
    url: str = REAL_URL,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    on_checked: Callable[[str], None] | None = None,
    timeout: float = 60.0,
) -> ParaformerFiles:
    """Download the model archive, check it and unpack it into ``dest``, all or nothing.

    Args:
        dest: the model directory to create; when it already holds a model, nothing is downloaded.
        url: where the ``.tar.bz2`` archive is.
        expected_size: the archive's size in bytes, when known.
        sha256: the archive's SHA-256 as hex, when known.
        progress: called after every chunk received.
        on_checked: called with the archive's SHA-256 (hex) once it passed the checks.
        timeout: seconds without progress (connect, read) before giving up.

    Returns:
        The model files inside ``dest``.

    Raises:
        ModelFetchError: see the class; ``dest`` is then untouched.
    """
    if dest.exists():
        return _existing_model(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as scratch:
        archive = Path(scratch) / "model.tar.bz2"
        digest = _download(
            url, archive, expected_size=expected_size, progress=progress, timeout=timeout
        )
        if sha256 is not None and digest != sha256.lower():
            raise ModelFetchError(f"{url} has SHA-256 {digest}, expected {sha256.lower()}")
        if on_checked is not None:
            on_checked(digest)
        root = _unpack(archive, Path(scratch) / "unpacked")
        try:
            ParaformerFiles.in_directory(root)
        except ModelFilesMissing as missing:
            raise ModelFetchError(f"the archive from {url} is incomplete: {missing}") from None
        # Same file system as dest (the scratch directory is its sibling): an atomic rename.
        try:
            os.rename(root, dest)
        except OSError:
            # Another fetch finished first: keep its copy when it is whole.
            return _existing_model(dest)
    return ParaformerFiles.in_directory(dest)


def _existing_model(dest: Path) -> ParaformerFiles:
    try:
        return ParaformerFiles.in_directory(dest)
    except ModelFilesMissing as missing:
        raise ModelFetchError(f"{missing}; remove the directory to download it again") from None


def _download(
    url: str, archive: Path, *, expected_size: int | None, progress: Progress | None, timeout: float
) -> str:
    """Stream ``url`` into ``archive``; return the SHA-256 of what was received."""
    digest = hashlib.sha256()
    received = 0
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code != httpx.codes.OK:
                raise ModelFetchError(f"GET {url} answered HTTP {response.status_code}")
            total = _announced_size(response)
            _check_size(url, total, expected_size, what="announces")
            with archive.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
    except httpx.HTTPError as error:
        raise ModelFetchError(f"GET {url} failed: {error}") from error
    _check_size(url, received, expected_size if expected_size is not None else total, what="sent")
    return digest.hexdigest()


def _announced_size(response: httpx.Response) -> int | None:
    # With a content encoding the header counts encoded bytes, not the bytes we write.
    length = response.headers.get("content-length")
    if length is None or "content-encoding" in response.headers:
        return None
    return int(length)


def _check_size(url: str, size: int | None, expected: int | None, *, what: str) -> None:
    if size is not None and expected is not None and size != expected:
        raise ModelFetchError(f"{url} {what} {size} bytes, expected {expected}")


def _unpack(archive: Path, into: Path) -> Path:
    """Unpack a .tar.bz2 refusing members that would land outside ``into``; return the model root."""
    into.mkdir()
    try:
        with tarfile.open(archive, "r:bz2") as tar:
            for member in tar.getmembers():
                if not (into / member.name).resolve().is_relative_to(into.resolve()):
                    raise ModelFetchError(
                        f"the archive's member {member.name!r} escapes its folder"
                    )
            # The "data" filter also refuses links out of the folder, devices and odd modes.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ModelFetchError(f"the archive cannot be unpacked: {error}") from error
    entries = list(into.iterdir())
    # Published archives hold one top folder; accept the files at the top level too.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into
