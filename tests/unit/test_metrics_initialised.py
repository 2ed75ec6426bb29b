"""Counters an alert or rate() reads, the histograms a dashboard's quantiles read, and the gauge
an autoscaler reads, exist at 0 from a gateway's start, not from its first event."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import prometheus_client
import pytest_asyncio

from earshot import metrics
from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.engines.triton import TritonRecognizer
from earshot.gateways.talk import peering, signaling
from earshot.gateways.talk.hosting import Rooms
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore
from tests.hpb_double import SignalingDouble
from tests.unit.test_talk_rooms import double as double
from tests.unit.test_talk_rooms import talk_settings

TALK_CODE = Path(metrics.__file__).parent / "gateways" / "talk"


def _exposition() -> str:
    return prometheus_client.generate_latest().decode()


def test_a_gateways_error_counters_start_at_zero() -> None:
    series = 'earshot_overload_rejections_total{engine="never-used",gateway="test-gw"}'
    assert series not in _exposition()

    metrics.initialise_gateway("test-gw", "never-used")

    exposition = _exposition()
    for line in (
        f"{series} 0.0",
        'earshot_engine_errors_total{engine="never-used",gateway="test-gw"} 0.0',
        'earshot_segments_finalised_total{engine="never-used",gateway="test-gw"} 0.0',
        'earshot_spool_full_rejections_total{gateway="test-gw"} 0.0',
        'earshot_active_streams{engine="never-used",gateway="test-gw"} 0.0',
    ):
        assert line in exposition.splitlines(), line
    assert any(  # shared by every gateway of the process: present, whatever its count
        line.startswith('earshot_storage_errors_total{store="segments"} ')
        for line in exposition.splitlines()
    )


def test_a_gateways_latency_histograms_start_empty() -> None:
    metrics.initialise_gateway("test-gw", "never-used")

    lines = _exposition().splitlines()
    for name in (
        "earshot_first_partial_latency_seconds",
        "earshot_final_latency_seconds",
        "earshot_chunk_processing_seconds",
        "earshot_reply_latency_seconds",
        "earshot_real_time_factor",
    ):
        assert f'{name}_count{{engine="never-used",gateway="test-gw"}} 0.0' in lines, name


async def test_a_triton_recognizers_series_start_at_zero() -> None:
    recognizer = TritonRecognizer("127.0.0.1:1", engine="paraformer", model="never-used-model")
    lines = _exposition().splitlines()
    await recognizer.aclose()
    for line in (
        'earshot_triton_round_trip_seconds_count{model="never-used-model"} 0.0',
        'earshot_triton_audio_lost_seconds_total{model="never-used-model"} 0.0',
        'earshot_triton_reconnects_total{model="never-used-model"} 0.0',
    ):
        assert line in lines, line


async def test_a_drainers_retry_counters_start_at_zero(tmp_path: Path) -> None:
    metrics.PERSISTER_RETRIES.clear()
    metrics.PERSISTER_WRITE_LATENCY.clear()
    assert "earshot_persister_retries_total{" not in _exposition()
    segments = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    drainer = Drainer(
        tmp_path,
        partials=MemoryPartialStore(ttl_seconds=60),
        segments=segments,
        policy=DrainPolicy(batch_size=10, poll_seconds=0.01, retry_max_seconds=0.05),
    )
    running = asyncio.create_task(drainer.run())
    try:
        for _ in range(100):
            if "earshot_persister_retries_total{" in _exposition():
                break
            await asyncio.sleep(0.01)
    finally:
        drainer.stop(0.0)
        await running
        await segments.aclose()
    lines = _exposition().splitlines()
    for store in ("partials", "segments"):
        assert f'earshot_persister_retries_total{{store="{store}"}} 0.0' in lines
        assert f'earshot_persister_write_seconds_count{{store="{store}"}} 0.0' in lines


TALK_LABELLED = {
    "TALK_CAPTIONS_SENT": metrics.TALK_CAPTIONS_SENT,
    "TALK_TRANSLATIONS": metrics.TALK_TRANSLATIONS,
    "TALK_TRANSCRIPT_FINALS": metrics.TALK_TRANSCRIPT_FINALS,
    "TALK_SIGNALING_ERRORS": metrics.TALK_SIGNALING_ERRORS,
}


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


async def test_a_talk_gateways_counters_start_at_zero(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    for counter in TALK_LABELLED.values():
        counter.clear()
    assert 'earshot_talk_transcript_finals_total{outcome="failed"}' not in _exposition()

    Rooms(talk_settings(double), recognizer)

    lines = _exposition().splitlines()
    expected = [
        *(f'earshot_talk_captions_sent_total{{kind="{k}"}} 0.0' for k in ("partial", "final")),
        *(
            f'earshot_talk_translations_total{{outcome="{o}"}} 0.0'
            for o in ("sent", "failed", "dropped")
        ),
        *(
            f'earshot_talk_transcript_finals_total{{outcome="{o}"}} 0.0'
            for o in ("kept", "failed", "dropped")
        ),
        *(
            f'earshot_talk_signaling_errors_total{{code="{c}"}} 0.0'
            for c in (
                "malformed",
                "no_such_session",
                "invalid_token",
                "room_join_failed",
                "no_audio_offered",
                "invalid_offer",
            )
        ),
    ]
    for line in expected:
        assert line in lines, line
    engine = recognizer.name
    for name in ("first", "final"):
        assert any(
            line.startswith(
                f'earshot_talk_{name}_caption_latency_seconds_count{{engine="{engine}"}}'
            )
            for line in lines
        ), name


def test_every_talk_label_the_code_counts_by_name_is_initialised() -> None:
    # the other side of the contract: a new literal label in the Talk code must be created at 0
    counted = re.compile(r"metrics\.(TALK_[A-Z_]+)\.labels\(\"([^\"]+)\"\)")
    found = {
        match.groups()
        for path in TALK_CODE.glob("*.py")
        for match in counted.finditer(path.read_text())
    }
    assert found, "no labelled Talk counter found: the pattern is out of date"
    initialised = {
        "TALK_CAPTIONS_SENT": set(metrics.TALK_CAPTION_KINDS),
        "TALK_TRANSLATIONS": set(metrics.TALK_TRANSLATION_OUTCOMES),
        "TALK_TRANSCRIPT_FINALS": set(metrics.TALK_TRANSCRIPT_OUTCOMES),
        "TALK_SIGNALING_ERRORS": set(signaling.ERROR_CODES),
    }
    missing = sorted((name, label) for name, label in found if label not in initialised[name])
    assert missing == []


#: Labels the Talk code computes at run time, and where their values come from.
TALK_COMPUTED_LABELS = {
    # the HPB server's own error codes: the ones handled by name are signaling.ERROR_CODES, a
    # server may send others (those appear with their first occurrence)
    "reply.code",
    "exc.reply.code",
    "message.code",
    # an offer refused: the refusal's code, one of peering.REFUSAL_CODES
    "exc.code",
    # a caption's kind, one of metrics.TALK_CAPTION_KINDS
    "kind",
    # the recogniser's name, the one initialise_talk is given
    "engine",
}


def test_every_label_the_talk_code_computes_comes_from_a_known_set() -> None:
    # a label built from, say, an exception's class name is neither stable nor created at 0
    computed = re.compile(r"metrics\.TALK_[A-Z_]+\.labels\(([^\"][^)]*)\)")
    found = {
        match.group(1)
        for path in TALK_CODE.glob("*.py")
        for match in computed.finditer(path.read_text())
    }
    assert found <= TALK_COMPUTED_LABELS, found - TALK_COMPUTED_LABELS


def test_every_offer_refusal_has_a_code_created_at_zero() -> None:
    refusals = peering.OfferRefused.__subclasses__()
    assert {refusal.code for refusal in refusals} == set(peering.REFUSAL_CODES)
    assert len(set(peering.REFUSAL_CODES)) == len(refusals)
