"""SequenceTable, the work of the Triton streaming models, over the real tiny Paraformer decoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from earshot.engines import paraformer, sequencing, tiny_paraformer
from earshot.engines.recognizers import EngineError, Samples
from earshot.events import Recognition

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


class Spying(paraformer.ParaformerDecoder):
    """The tiny Paraformer, recording how many streams each decode call took."""

    def __init__(self, files: tiny_paraformer.ParaformerFiles) -> None:
        super().__init__(files)
        self.decoded: list[int] = []

    def decode(self, streams: Sequence[paraformer.ParaformerStream]) -> list[list[Recognition]]:
        self.decoded.append(len(streams))
        return super().decode(streams)


def test_chunks_without_a_step_due_are_answered_before_the_batch_is_decoded(
    files: tiny_paraformer.ParaformerFiles,
) -> None:
    decoder = Spying(files)
    table = sequencing.SequenceTable(decoder, idle_seconds=60.0)
    table.step([chunk(1, syllables(0.5), start=True), chunk(2, syllables(0.5), start=True)])
    table.step([chunk(3, syllables(0.5), start=True)])
    decoder.decoded.clear()

    # 1 gets enough for its first step, 2 too little, 3 ends, 4 is unknown.
    chunks = [
        chunk(1, syllables(0.2)),
        chunk(2, syllables(0.02)),
        chunk(3, np.zeros(0, np.float32), end=True),
        chunk(4, syllables(0.02)),
    ]
    answers = table.answers(chunks)
    early = [next(answers), next(answers)]
    assert decoder.decoded == [], "the early answers came before the decode"
    late = list(answers)

    assert decoder.decoded == [2]
    assert [i for i, _ in early + late] == [1, 3, 0, 2]
    outcomes = dict(early + late)
    assert outcomes[1] == sequencing.Outcome()
    assert outcomes[3].error is not None
    assert [s.is_final for s in outcomes[0].said] == [False], "1's first step: a partial"
    assert [s.is_final for s in outcomes[2].said] == [True], "3's end: its final"
    assert len(table) == 2


def test_a_failed_decode_errs_the_chunks_of_its_batch_and_only_them(
    files: tiny_paraformer.ParaformerFiles,
) -> None:
    class Failing(paraformer.ParaformerDecoder):
        def decode(self, streams: Sequence[paraformer.ParaformerStream]) -> list[list[Recognition]]:
            raise RuntimeError("out of memory")

    table = sequencing.SequenceTable(Failing(files), idle_seconds=60.0)

    outcomes = table.step(
        [chunk(1, syllables(0.7), start=True), chunk(2, syllables(0.1), start=True)]
    )

    assert outcomes[0].error == "decoding failed: out of memory"
    assert outcomes[1] == sequencing.Outcome()
    assert len(table) == 1, "sequence 2 goes on"


def test_an_end_answered_without_a_decode_forgets_its_sequence(
    files: tiny_paraformer.ParaformerFiles,
) -> None:
    class NothingToDo(paraformer.ParaformerDecoder):
        def needs_decode(self, stream: paraformer.ParaformerStream) -> bool:
            return False

    table = sequencing.SequenceTable(NothingToDo(files), idle_seconds=60.0)
    table.step([chunk(1, syllables(0.1), start=True), chunk(2, syllables(0.1), start=True)])

    (outcome,) = table.step([chunk(1, np.zeros(0, np.float32), end=True)])

    assert outcome == sequencing.Outcome()
    assert len(table) == 1


def test_a_decoder_that_cannot_tell_which_streams_have_work_decodes_every_chunk(
    files: tiny_paraformer.ParaformerFiles,
) -> None:
    class Plain:  # a BatchDecoder without needs_decode
        def __init__(self) -> None:
            self.inner = paraformer.ParaformerDecoder(files)
            self.decoded: list[int] = []
            self.name, self.sample_rate = self.inner.name, self.inner.sample_rate
            self.open, self.accept, self.finish = (
                self.inner.open,
                self.inner.accept,
                self.inner.finish,
            )

        def decode(self, streams: Sequence[paraformer.ParaformerStream]) -> list[list[Recognition]]:
            self.decoded.append(len(streams))
            return self.inner.decode(streams)

    decoder = Plain()
    table = sequencing.SequenceTable(decoder, idle_seconds=60.0)

    answers = list(
        table.answers(
            [chunk(1, syllables(0.02), start=True), chunk(2, syllables(0.02), start=True)]
        )
    )

    assert [i for i, _ in answers] == [0, 1]
    assert decoder.decoded == [2]


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
