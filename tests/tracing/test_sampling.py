"""Sampling decisions: the standard sampler names, consistent ratios, parent-based behaviour."""

from __future__ import annotations

import random

import pytest

from proxy.tracing.sampling import SamplerConfigError, sampler_from_env
from proxy.tracing.traceparent import WIRE_PREFIX, new_root_traceparents, parse_traceparent


def test_default_is_parent_based_always_on() -> None:
    sampler = sampler_from_env(None, None)
    assert sampler.sample_root(123)
    assert sampler.sample_child(123, parent_sampled=False) is False
    assert sampler.sample_child(123, parent_sampled=True) is True


def test_ratio_samples_about_the_ratio_and_is_deterministic_per_trace_id() -> None:
    sampler = sampler_from_env("traceidratio", "0.1")
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(20_000)]
    decisions = [sampler.sample_root(i) for i in ids]
    assert 0.09 < sum(decisions) / len(ids) < 0.11
    assert decisions == [sampler.sample_root(i) for i in ids]


def test_ratio_matches_the_opentelemetry_sdk_decision() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    ours = sampler_from_env("traceidratio", "0.25")
    sdk = TraceIdRatioBased(0.25)
    rng = random.Random(3)
    for _ in range(2000):
        trace_id = rng.getrandbits(128)
        expected = sdk.should_sample(None, trace_id, "x").decision == Decision.RECORD_AND_SAMPLE
        assert ours.sample_root(trace_id) == expected


def test_always_off_and_parent_based_always_off() -> None:
    assert not sampler_from_env("always_off", None).sample_root(1)
    assert not sampler_from_env("always_off", None).sample_child(1, True)
    assert sampler_from_env("parentbased_always_off", None).sample_child(1, True)


@pytest.mark.parametrize(
    ("name", "arg", "message"),
    [
        ("sometimes", None, "OTEL_TRACES_SAMPLER='sometimes'"),
        ("traceidratio", "1.5", "OTEL_TRACES_SAMPLER_ARG='1.5'"),
        ("parentbased_traceidratio", "x", "OTEL_TRACES_SAMPLER_ARG='x'"),
    ],
)
def test_bad_sampler_settings_name_the_variable(name: str, arg: str | None, message: str) -> None:
    with pytest.raises(SamplerConfigError, match=message):
        sampler_from_env(name, arg)


@pytest.mark.parametrize("ratio", ["0", "0.01", "0.5", "0.999", "1"])
def test_bulk_root_decisions_from_hex_match_the_sampler(ratio: str) -> None:
    sampler = sampler_from_env("parentbased_traceidratio", ratio)
    headers, sampled = new_root_traceparents(3000, sampler.root_hex_threshold)
    assert len(headers) == 3000
    chosen = {index for index, _, _ in sampled}
    for index, header in enumerate(headers):
        assert header.startswith(WIRE_PREFIX) and len(header) == len(WIRE_PREFIX) + 55
        context = parse_traceparent(header[len(WIRE_PREFIX) :])
        assert context is not None
        trace_id, _, flag = context
        assert flag == sampler.sample_root(trace_id) == (index in chosen)
    for index, trace_id, span_id in sampled:
        assert parse_traceparent(headers[index][len(WIRE_PREFIX) :]) == (trace_id, span_id, True)
    expected = float(ratio) * 3000
    assert abs(len(sampled) - expected) <= max(5 * expected**0.5, 1)


def test_the_hex_threshold_sits_exactly_on_the_ratio_bound() -> None:
    sampler = sampler_from_env("traceidratio", "0.5")
    assert sampler.root_hex_threshold == b"8000000000000000"
    assert sampler.sample_root(0x7FFF_FFFF_FFFF_FFFF) and not sampler.sample_root(1 << 63)
    assert sampler_from_env("traceidratio", "1").root_hex_threshold is None
    assert sampler_from_env("traceidratio", "0").root_hex_threshold == b"0" * 16
