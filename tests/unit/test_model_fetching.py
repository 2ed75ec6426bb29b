"""fetch_paraformer against a real local HTTP server serving archives of the tiny model."""

from __future__ import annotations

import functools
import hashlib
import io
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from earshot.engines import model_fetching, tiny_paraformer

TOP = "sherpa-onnx-streaming-paraformer-bilingual-zh-en"


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated`` promises more bytes than it sends."""

    def do_GET(self) -> None:
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    """Clients that give up half-way (a wrong announced size) are expected here, not errors."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exception(), ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on a free port; yields its base URL and the folder it serves."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def publish(served: tuple[str, Path], name: str, members: dict[str, bytes]) -> tuple[str, Path]:
    """Write a .tar.bz2 with the given members into the served folder; return its URL and path."""
    base, root = served
    archive = root / name
    with tarfile.open(archive, "w:bz2") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"{base}/{name}", archive


@pytest.fixture(scope="module")
def model_archive(
    served: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    files = tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"))
    return publish(
        served,
        "model.tar.bz2",
        {
            f"{TOP}/encoder.int8.onnx": files.encoder.read_bytes(),
            f"{TOP}/decoder.int8.onnx": files.decoder.read_bytes(),
            f"{TOP}/tokens.txt": files.tokens.read_bytes(),
            f"{TOP}/test_wavs/README": b"waves would be here",
        },
    )


def only_dest_left(dest: Path) -> bool:
    return [p.name for p in dest.parent.iterdir()] == ([dest.name] if dest.exists() else [])


def test_fetch_downloads_checks_and_unpacks_the_model(
    model_archive: tuple[str, Path], tmp_path: Path
) -> None:
    url, archive = model_archive
    size = archive.stat().st_size
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "models" / "paraformer"

    files = model_fetching.fetch_paraformer(
        dest,
        url=url,
        expected_size=size,
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest().upper(),
        progress=lambda done, total: seen.append((done, total)),
    )

    assert files == tiny_paraformer.ParaformerFiles(
        encoder=dest / "encoder.int8.onnx",
        decoder=dest / "decoder.int8.onnx",
        tokens=dest / "tokens.txt",
    )
    assert (dest / "test_wavs" / "README").is_file()
    assert seen[-1] == (size, size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert only_dest_left(dest)


def test_fetch_without_size_or_checksum_relies_on_content_length(
    model_archive: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = model_archive

    files = model_fetching.fetch_paraformer(tmp_path / "m", url=url)

    assert files.tokens.is_file()


def test_an_existing_model_is_returned_without_downloading(
    model_archive: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = model_archive
    first = model_fetching.fetch_paraformer(tmp_path / "m", url=url)

    again = model_fetching.fetch_paraformer(tmp_path / "m", url=f"{url}.gone")

    assert again == first


def test_an_existing_incomplete_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()

    with pytest.raises(model_fetching.ModelFetchError, match="remove the directory"):
        model_fetching.fetch_paraformer(tmp_path / "m", url="http://127.0.0.1:9/none")


def test_a_size_mismatch_fails_and_leaves_nothing_behind(
    model_archive: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = model_archive
    dest = tmp_path / "m"

    with pytest.raises(model_fetching.ModelFetchError, match="expected 12345"):
        model_fetching.fetch_paraformer(dest, url=url, expected_size=12345)

    assert only_dest_left(dest)
    assert not dest.exists()


def test_a_checksum_mismatch_fails_and_leaves_nothing_behind(
    model_archive: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = model_archive
    dest = tmp_path / "m"

    with pytest.raises(model_fetching.ModelFetchError, match="SHA-256"):
        model_fetching.fetch_paraformer(dest, url=url, sha256="0" * 64)

    assert not dest.exists()
    assert only_dest_left(dest)


def test_an_http_error_is_reported_with_its_status(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = served

    with pytest.raises(model_fetching.ModelFetchError, match="HTTP 404"):
        model_fetching.fetch_paraformer(tmp_path / "m", url=f"{base}/missing.tar.bz2")

    assert only_dest_left(tmp_path / "m")


def test_a_truncated_download_is_reported(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served

    with pytest.raises(model_fetching.ModelFetchError, match="failed"):
        model_fetching.fetch_paraformer(tmp_path / "m", url=f"{base}/truncated")


def test_an_unreachable_server_is_reported(tmp_path: Path) -> None:
    with pytest.raises(model_fetching.ModelFetchError, match="failed"):
        model_fetching.fetch_paraformer(tmp_path / "m", url="http://127.0.0.1:9/model.tar.bz2")


def test_members_escaping_the_folder_are_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = publish(served, "evil.tar.bz2", {"../evil.txt": b"gotcha", "tokens.txt": b"a 0\n"})
    dest = tmp_path / "deep" / "m"

    with pytest.raises(model_fetching.ModelFetchError, match="escapes"):
        model_fetching.fetch_paraformer(dest, url=url)

    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert only_dest_left(dest)


def test_an_archive_without_the_model_files_is_refused(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = publish(served, "partial.tar.bz2", {f"{TOP}/tokens.txt": b"a 0\n"})

    with pytest.raises(
        model_fetching.ModelFetchError, match=r"encoder\.int8\.onnx or encoder\.onnx"
    ):
        model_fetching.fetch_paraformer(tmp_path / "m", url=url)

    assert only_dest_left(tmp_path / "m")


def test_a_corrupt_archive_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    (root / "corrupt.tar.bz2").write_bytes(b"this is not bzip2 at all")

    with pytest.raises(model_fetching.ModelFetchError, match="cannot be unpacked"):
        model_fetching.fetch_paraformer(tmp_path / "m", url=f"{base}/corrupt.tar.bz2")
