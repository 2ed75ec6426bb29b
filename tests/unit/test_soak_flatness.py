"""The soak's RSS rule: each process judged against a baseline its faults' churn cannot hide in."""

from __future__ import annotations

from bench.soak import Sample, rss_flatness

MIB = 2**20


def gateway_samples(rss_mib: dict[float, int], *, pid: int = 7) -> list[Sample]:
    """A sample every 5 s, the gateway's RSS from the latest step at or before its time."""
    end = max(rss_mib)
    samples = []
    for at in range(0, int(end) + 1, 5):
        size = rss_mib[max(t for t in rss_mib if t <= at)]
        samples.append(Sample(float(at), pid, size * MIB, None, 0, 0, float("nan"), 0.0))
    return samples


def test_a_step_when_the_first_fault_begins_is_growth_not_baseline() -> None:
    # 100 MiB until 90 s (the first fault of a 10-minute soak), 120 MiB after: +20 %.
    (judged,) = rss_flatness(gateway_samples({0: 100, 90: 120, 450: 120}), "gateway")
    assert judged.window == (30.0, 90.0)
    assert judged.early == 100 * MIB
    assert judged.late == 120 * MIB
    assert not judged.flat


def test_a_process_that_stays_at_its_baseline_is_flat() -> None:
    (judged,) = rss_flatness(gateway_samples({0: 100, 200: 104, 450: 104}), "gateway")
    assert judged.flat
    assert round(judged.growth, 2) == 0.04


def test_a_restarted_gateway_with_150_s_of_samples_is_judged_on_its_own() -> None:
    first = gateway_samples({0: 100, 450: 100}, pid=1)
    second = [
        Sample(s.at + 451, 2, s.gateway_rss, None, 0, 0, s.drain_lag, 0.0)
        for s in gateway_samples({0: 100, 150: 100})
    ]
    assert [j.name for j in rss_flatness(first + second, "gateway")] == ["gateway 1", "gateway 2"]
