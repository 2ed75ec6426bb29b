"""``earshot demo``'s two paths: the published model fetched (here from a local HTTP server serving a
model tarball, as GitHub would), and offline, where it says so in one line and uses the tiny model."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from earshot.cli import demoing
from earshot.engines import tiny_paraformer
from tests.unit.test_cli_first_contact import _free_port, earshot_run
from tests.unit.test_model_fetching import TOP, QuietHandler, QuietServer, publish

MODEL_DIR = Path("models") / demoing.FETCHED_MODEL


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A local HTTP server publishing a model tarball; yields its URL and SHA-256."""
    root = tmp_path_factory.mktemp("published")
    server = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"), seed=3)
    url, archive = publish(
        (f"http://127.0.0.1:{server.server_address[1]}", root),
        "model.tar.bz2",
        {
            f"{TOP}/encoder.int8.onnx": files.encoder.read_bytes(),
            f"{TOP}/decoder.int8.onnx": files.decoder.read_bytes(),
            f"{TOP}/tokens.txt": files.tokens.read_bytes(),
        },
    )
    try:
        yield url, hashlib.sha256(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_demo_fetches_the_model_checks_it_and_transcribes_with_it(
    published: tuple[str, str], tmp_path: Path
) -> None:
    url, digest = published
    cache = tmp_path / "cache"
    done = earshot_run(
        "demo", "--speed", "0", "--model-url", url, "--model-sha256", digest,
        cwd=tmp_path, EARSHOT_CACHE_DIR=str(cache),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert f"SHA-256 matches the pinned {digest}" in flat
    assert f"model {cache / MODEL_DIR})" in flat
    assert "tiny" not in done.stdout
    assert "transcript" in done.stdout
    assert (cache / MODEL_DIR / "tokens.txt").is_file()
    assert not (cache / "models" / "tiny-paraformer").exists()


def test_a_second_demo_uses_the_cached_model_without_downloading(
    published: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = published
    cache = tmp_path / "cache"
    first = earshot_run(
        "demo", "--speed", "0", "--model-url", url, cwd=tmp_path, EARSHOT_CACHE_DIR=str(cache)
    )
    assert first.returncode == 0, first.stderr
    offline_url = f"http://127.0.0.1:{_free_port()}/model.tar.bz2"
    again = earshot_run(
        "demo", "--speed", "0", "--model-url", offline_url, cwd=tmp_path,
        EARSHOT_CACHE_DIR=str(cache),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"model {cache / MODEL_DIR})" in " ".join(again.stdout.split())
    assert "offline" not in again.stdout


def test_offline_the_demo_says_so_in_one_line_and_uses_the_tiny_model(tmp_path: Path) -> None:
    port = _free_port()
    done = earshot_run(
        "demo", "--speed", "0", "--model-url", f"http://127.0.0.1:{port}/model.tar.bz2",
        cwd=tmp_path, EARSHOT_CACHE_DIR=str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("offline")]
    assert said == [
        "offline: cannot reach 127.0.0.1 ([Errno 111] Connection refused): using the tiny model, "
        "which makes up its words"
    ]
    assert "model the tiny random-weight model" in " ".join(done.stdout.split())
    assert "transcript" in done.stdout
    assert not (tmp_path / MODEL_DIR).exists()


def test_a_download_with_the_wrong_checksum_is_not_used(
    published: tuple[str, str], tmp_path: Path
) -> None:
    url, digest = published
    done = earshot_run(
        "demo", "--speed", "0", "--model-url", url, "--model-sha256", "0" * 64,
        cwd=tmp_path, EARSHOT_CACHE_DIR=str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert f"has SHA-256 {digest}, expected {'0' * 64}: using the tiny model" in flat
    assert not (tmp_path / MODEL_DIR).exists()
