"""Sampling decisions: the standard sampler names, consistent ratios, parent-based behaviour."""

from __future__ import annotations

import random

import pytest

from proxy.tracing.sampling import SamplerConfigError, sampler_from_env


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
