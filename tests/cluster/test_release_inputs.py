"""What tests/cluster/release.py gives the chart besides the images, checked without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from earshot.engines import tiny_paraformer
from tests.cluster import release


def test_the_models_claim_gets_earshots_tiny_paraformer_built_when_the_cache_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fresh machine: nothing (no demo, no bench) has built the model before the cluster tests
    monkeypatch.setenv("EARSHOT_CACHE_DIR", str(tmp_path))

    folder = release.tiny_paraformer()

    assert folder == tmp_path / "models" / "tiny-paraformer"
    files = tiny_paraformer.ParaformerFiles.in_directory(folder)
    assert {files.encoder.parent, files.decoder.parent, files.tokens.parent} == {folder}
