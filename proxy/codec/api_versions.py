"""Honest ApiVersions: advertise, for every API the proxy decodes, only versions it can parse.

The most common way a Kafka proxy breaks after a Kafka release is by passing through a broker's
newer versions of an API it then fails to parse. Each API the proxy decodes is narrowed to the
intersection of the broker's range and kio's; an API with no overlap is removed. APIs the proxy
never decodes keep the broker's range, so new APIs work through the proxy unchanged.

One deliberate exception: Produce keeps the broker's minimum. Kafka 4 brokers still advertise
Produce v0 because librdkafka misbehaves without it; the proxy does the same, and a Produce in a
version kio cannot parse is forwarded untouched (the broker rejects v0-2 itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from .apis import DECODED, ApiKey, supported_versions

#: API key -> (min, max) the proxy can decode.
VersionRanges = Mapping[int, tuple[int, int]]

UNSUPPORTED_VERSION = 35


def decodable_ranges(api_keys: frozenset[int] = DECODED) -> dict[int, tuple[int, int]]:
    ranges = {}
    for key in api_keys:
        supported = supported_versions(key)
        if supported is not None:
            ranges[int(key)] = supported
    return ranges


def restrict_api_versions(
    payload: Any,
    ranges: VersionRanges,
    on_narrowed: Callable[[int, tuple[int, int], tuple[int, int] | None], None] | None = None,
) -> Any | None:
    """The ApiVersions response narrowed to `ranges`, or None when nothing had to change."""
    kept = []
    changed = False
    for entry in payload.api_keys or ():
        limits = ranges.get(entry.api_key)
        if limits is None:
            kept.append(entry)
            continue
        low, high = limits
        new_min = (
            entry.min_version if entry.api_key == ApiKey.PRODUCE else max(entry.min_version, low)
        )
        new_max = min(entry.max_version, high)
        if new_min > new_max:
            changed = True
            if on_narrowed:
                on_narrowed(entry.api_key, (entry.min_version, entry.max_version), None)
            continue
        if (new_min, new_max) != (entry.min_version, entry.max_version):
            changed = True
            if on_narrowed:
                on_narrowed(
                    entry.api_key, (entry.min_version, entry.max_version), (new_min, new_max)
                )
            entry = dataclasses.replace(
                entry,
                min_version=type(entry.min_version)(new_min),
                max_version=type(entry.max_version)(new_max),
            )
        kept.append(entry)
    if not changed:
        return None
    return dataclasses.replace(payload, api_keys=tuple(kept))
