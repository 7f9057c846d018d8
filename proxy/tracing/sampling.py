"""Head sampling as configured by `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.

Decided by the proxy before any span object exists, so an unsampled record costs a random number
and a header, nothing more. The decisions match the OpenTelemetry SDK's samplers: the ratio sampler
compares the low 64 bits of the trace id with ratio * 2^64, so every party that sees the same trace
id with the same ratio agrees; parent-based samplers follow the sampled flag of the record's
existing context.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_LOW_64 = (1 << 64) - 1


class SamplerConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Sampler:
    #: How roots (records with no context yet) are decided: a ratio in [0, 1].
    root_ratio: float
    #: Whether a record's existing context decides (parent-based samplers).
    parent_based: bool

    @property
    def _bound(self) -> int:
        return round(self.root_ratio * (_LOW_64 + 1))

    @property
    def root_hex_threshold(self) -> bytes | None:
        """For deciding roots from trace ids as 32 lower-case hex digits, without int
        conversion: a root is sampled when its last 16 digits sort below this (same width, so
        byte order is numeric order). None means every root is sampled."""
        bound = self._bound
        return None if bound > _LOW_64 else b"%016x" % bound

    def sample_root(self, trace_id: int) -> bool:
        return (trace_id & _LOW_64) < self._bound

    def sample_child(self, trace_id: int, parent_sampled: bool) -> bool:
        if self.parent_based:
            return parent_sampled
        return self.sample_root(trace_id)


def sampler_from_env(name: str | None, arg: str | None) -> Sampler:
    """Build the sampler; unknown names and bad ratios raise SamplerConfigError."""
    name = (name or "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise SamplerConfigError(
            f"OTEL_TRACES_SAMPLER={name!r} is invalid: expected one of {', '.join(SAMPLERS)}"
        )
    ratio = 1.0
    if name.endswith("always_off"):
        ratio = 0.0
    elif name.endswith("traceidratio"):
        try:
            ratio = float(arg) if arg not in (None, "") else 1.0
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise SamplerConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r} is invalid: expected a ratio from 0 to 1"
            )
    return Sampler(root_ratio=ratio, parent_based=name.startswith("parentbased_"))
