"""Turning settings into the tracing interceptors (or none, when tracing is off)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..metrics import Metrics
from .consumer import FetchTracer
from .core import build_core
from .export import SpanPipeline
from .producer import ProduceTracer


@dataclass
class Tracing:
    interceptors: list[object] = field(default_factory=list)
    pipeline: SpanPipeline | None = None

    def shutdown(self, timeout: float = 5.0) -> None:
        if self.pipeline is not None:
            self.pipeline.shutdown(timeout)


def build_tracing(
    enabled: bool, env: Mapping[str, str], metrics: Metrics, consumer_span_mode: str
) -> Tracing:
    """Tracing as configured; raises ValueError naming the bad OTEL_* variable."""
    if not enabled or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracing()
    core = build_core(env, metrics, consumer_span_mode)
    return Tracing([ProduceTracer(core, metrics), FetchTracer(core, metrics)], core.pipeline)
