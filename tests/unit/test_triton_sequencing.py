"""SequenceTable, the work of the Triton streaming models, over the real tiny Paraformer decoder."""

from __future__ import annotations

import numpy as np
import pytest

from earshot.engines import paraformer, sequencing, tiny_paraformer
from earshot.engines.recognizers import EngineError, Samples

RATE = 16_000


def syllables(seconds: float, *, pitch: float = 120.0) -> Samples:
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 20))
    return np.asarray(0.1 * voice * np.sin(4 * np.pi * t) ** 2, dtype=np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tiny_paraformer.ParaformerFiles:
    return tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def table(files: tiny_paraformer.ParaformerFiles) -> sequencing.SequenceTable[object]:
    decoder = sequencing.load_decoder("paraformer", {"model_dir": str(files.encoder.parent)})
    return sequencing.SequenceTable(decoder, idle_seconds=60.0)


def chunk(
    corrid: int, audio: Samples, *, start: bool = False, end: bool = False
) -> sequencing.Chunk:
    return sequencing.Chunk(corrid=corrid, start=start, end=end, audio=audio)


def test_a_sequence_says_what_the_decoder_says_and_ends_with_a_final(
    table: sequencing.SequenceTable[object], files: tiny_paraformer.ParaformerFiles
) -> None:
    audio = syllables(2.0)
    decoder = paraformer.ParaformerDecoder(files)
    stream = decoder.open()
    decoder.accept(stream, audio)
    expected = decoder.decode([stream])[0]
    decoder.finish(stream)
    expected += decoder.decode([stream])[0]

    (first,) = table.step([chunk(7, audio, start=True)])
    (last,) = table.step([chunk(7, np.zeros(0, np.float32), end=True)])

    said = first.said + last.said
    assert [(s.text, s.is_final) for s in said] == [(r.text, r.is_final) for r in expected]
    assert said[-1].is_final
    assert len(table) == 0


def test_segments_are_numbered_per_sequence_from_zero(
    table: sequencing.SequenceTable[object],
) -> None:
    pause = np.zeros(3 * RATE, np.float32)
    speech = np.concatenate([syllables(1.5), pause, syllables(1.5, pitch=200.0)])

    (outcome,) = table.step([chunk(1, speech, start=True, end=True)])

    assert [s.segment for s in outcome.said if s.is_final] == [0, 1]


def test_interleaved_sequences_in_one_step_keep_their_own_state(
    table: sequencing.SequenceTable[object],
) -> None:
    low, high = syllables(2.0, pitch=100.0), syllables(2.0, pitch=220.0)

    together = table.step(
        [chunk(1, low, start=True, end=True), chunk(2, high, start=True, end=True)]
    )
    alone = table.step([chunk(3, high, start=True, end=True)])

    assert together[1].said == alone[0].said
    assert together[0].said != together[1].said


def test_a_chunk_without_start_for_an_unknown_sequence_gets_an_error_naming_start(
    table: sequencing.SequenceTable[object],
) -> None:
    outcomes = table.step([chunk(5, syllables(0.2)), chunk(6, syllables(0.2), start=True)])

    assert outcomes[0].error is not None
    assert "START" in outcomes[0].error
    assert outcomes[1].error is None
    assert len(table) == 1


def test_a_sequence_idle_longer_than_the_model_allows_is_forgotten(
    files: tiny_paraformer.ParaformerFiles,
) -> None:
    now = [0.0]
    decoder = sequencing.load_decoder("paraformer", {"model_dir": str(files.encoder.parent)})
    table = sequencing.SequenceTable(decoder, idle_seconds=1.0, clock=lambda: now[0])
    table.step([chunk(1, syllables(0.2), start=True)])

    now[0] = 2.0
    (outcome,) = table.step([chunk(1, syllables(0.2))])

    assert outcome.error is not None
    assert len(table) == 0


def test_model_parameters_must_name_a_model_directory_and_numbers() -> None:
    with pytest.raises(EngineError, match="model_dir"):
        sequencing.load_decoder("paraformer", {"model_dir": ""})
    with pytest.raises(EngineError, match="num_threads"):
        sequencing.load_decoder("paraformer", {"model_dir": "/nowhere", "num_threads": "two"})


def test_config_values_are_read_from_tritons_json_form() -> None:
    config = {
        "parameters": {"model_dir": {"string_value": "/m"}},
        "sequence_batching": {"max_sequence_idle_microseconds": "60000000"},
    }

    assert sequencing.string_parameters(config) == {"model_dir": "/m"}
    assert sequencing.idle_seconds(config) == 60.0
