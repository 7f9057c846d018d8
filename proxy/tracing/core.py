"""What both tracing sides share, built once from the OTEL_* settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource

from ..metrics import Metrics
from .export import SpanPipeline
from .propagation import Propagation
from .sampling import Sampler, sampler_from_env

CONSUMER_SPAN_MODES = ("parent", "link")


@dataclass(frozen=True, slots=True)
class TracingCore:
    sampler: Sampler
    propagation: Propagation
    pipeline: SpanPipeline
    resource: Resource
    #: "parent": receive spans are children of the record's context; "link": they link to it.
    consumer_span_mode: str = "parent"


def build_core(env: Mapping[str, str], metrics: Metrics, consumer_span_mode: str) -> TracingCore:
    """Validate the OTEL_* variables and build the tracing core (raises ValueError on bad ones).

    `env` is the effective environment; the SDK's resource and exporters read the process
    environment, which the CLI has already overlaid with the env-file.
    """
    sampler = sampler_from_env(env.get("OTEL_TRACES_SAMPLER"), env.get("OTEL_TRACES_SAMPLER_ARG"))
    propagation = Propagation((env.get("OTEL_PROPAGATORS") or "tracecontext,baggage").split(","))
    pipeline = SpanPipeline.from_env(env, metrics)
    return TracingCore(
        sampler=sampler,
        propagation=propagation,
        pipeline=pipeline,
        resource=Resource.create(),
        consumer_span_mode=consumer_span_mode,
    )
