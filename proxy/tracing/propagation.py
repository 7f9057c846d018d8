"""Reading and writing trace context in record headers with the configured propagators.

`OTEL_PROPAGATORS` (default `tracecontext,baggage`) names them; `b3`, `b3multi` and `jaeger` are
supported too. With only tracecontext/baggage the proxy reads and writes `traceparent` itself (the
hot path); other propagators go through OpenTelemetry's own implementations over a small carrier.
Junk in headers never raises: an unreadable context is treated as no context.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ..codec.records import EncodedHeaders, encode_headers
from .spans import span_context
from .traceparent import TRACEPARENT, WIRE_PREFIX, format_traceparent, parse_traceparent

Headers = Sequence[tuple[str, bytes | None]]
KNOWN = ("tracecontext", "baggage", "b3", "b3multi", "jaeger", "none")
#: Longest header value the proxy will hand to a propagator (trace headers are short).
MAX_HEADER_VALUE = 8192


class PropagatorConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RecordContext:
    """The span context a record carries (its creation context)."""

    trace_id: int
    span_id: int
    sampled: bool

    def span_context(self) -> SpanContext:
        return span_context(self.trace_id, self.span_id, remote=True, sampled=self.sampled)


class _DictGetter(Getter[dict[str, list[str]]]):
    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


class _DictSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


_GETTER = _DictGetter()
_SETTER = _DictSetter()


def _load(name: str) -> TextMapPropagator:
    if name == "tracecontext":
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator()
    if name == "baggage":
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        return W3CBaggagePropagator()
    if name == "b3":
        from opentelemetry.propagators.b3 import B3SingleFormat

        return B3SingleFormat()
    if name == "b3multi":
        from opentelemetry.propagators.b3 import B3MultiFormat

        return B3MultiFormat()
    from opentelemetry.propagators.jaeger import JaegerPropagator

    return JaegerPropagator()


class Propagation:
    """The configured propagators, applied to record headers."""

    def __init__(self, names: Iterable[str]) -> None:
        chosen = [n.strip().lower() for n in names if n.strip()]
        unknown = [n for n in chosen if n not in KNOWN]
        if unknown:
            raise PropagatorConfigError(
                f"OTEL_PROPAGATORS has unknown {', '.join(unknown)}: "
                f"expected a comma-separated list of {', '.join(KNOWN)}"
            )
        chosen = [n for n in chosen if n != "none"]
        self.names = tuple(chosen)
        self._fast = "tracecontext" in chosen and set(chosen) <= {"tracecontext", "baggage"}
        self._propagators = [_load(n) for n in chosen if n != "baggage"]
        self.fields = frozenset(f.lower() for p in self._propagators for f in p.fields)

    @property
    def tracecontext_only(self) -> bool:
        """Contexts are exactly W3C traceparent headers (the fast paths rely on that)."""
        return self._fast

    @property
    def enabled(self) -> bool:
        return bool(self._propagators)

    def carries_context(self, headers: Headers) -> bool:
        return any(key.lower() in self.fields for key, _ in headers)

    def extract(self, headers: Headers) -> RecordContext | None:
        """The record's context from its headers, or None if it has none (or junk)."""
        if not headers:
            return None
        if self._fast:
            for key, value in headers:
                if key == TRACEPARENT or key.lower() == TRACEPARENT:
                    parsed = parse_traceparent(value)
                    return RecordContext(*parsed) if parsed else None
            return None
        carrier: dict[str, list[str]] = {}
        for key, value in headers:
            lowered = key.lower()
            if lowered in self.fields and value is not None and len(value) <= MAX_HEADER_VALUE:
                carrier.setdefault(lowered, []).append(value.decode("latin-1"))
        if not carrier:
            return None
        for propagator in self._propagators:
            try:
                context = propagator.extract(carrier, getter=_GETTER)
            except Exception:  # third-party parsers on hostile input: treat as absent
                continue
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                return RecordContext(
                    span_context.trace_id, span_context.span_id, span_context.trace_flags.sampled
                )
        return None

    def inject_encoded(self, trace_id: int, span_id: int, sampled: bool) -> EncodedHeaders:
        """`inject`, already in record-header wire form (the per-record hot path)."""
        if self._fast:
            return EncodedHeaders(1, WIRE_PREFIX + format_traceparent(trace_id, span_id, sampled))
        return encode_headers(self.inject(trace_id, span_id, sampled))

    def inject(self, trace_id: int, span_id: int, sampled: bool) -> list[tuple[str, bytes]]:
        """Headers that carry this context, one set per configured propagator."""
        if self._fast:
            return [(TRACEPARENT, format_traceparent(trace_id, span_id, sampled))]
        span = NonRecordingSpan(
            SpanContext(
                trace_id,
                span_id,
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0),
            )
        )
        context = trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        for propagator in self._propagators:
            propagator.inject(carrier, context=context, setter=_SETTER)
        return [(key, value.encode("latin-1")) for key, value in carrier.items()]
