"""Which Kafka APIs the proxy decodes, and the kio schemas it decodes them with.

Everything the proxy parses goes through kio's dataclasses, generated from Kafka's own JSON
message specs; the version range kio knows for an API is the range the proxy can honestly
advertise for it (see `api_versions`).
"""

from __future__ import annotations

import enum
from functools import cache, lru_cache

from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map
from kio.static.constants import EntityType


class ApiKey(enum.IntEnum):
    """API keys the proxy has a reason to look inside."""

    PRODUCE = 0
    FETCH = 1
    METADATA = 3
    OFFSET_COMMIT = 8
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    SYNC_GROUP = 14
    API_VERSIONS = 18
    TXN_OFFSET_COMMIT = 28
    DESCRIBE_CLUSTER = 60
    CONSUMER_GROUP_HEARTBEAT = 68
    SHARE_FETCH = 78
    SHARE_ACKNOWLEDGE = 79


#: Every API key Kafka's message specs define (as kio generated them), decoded by the proxy or not.
KNOWN_API_KEYS: frozenset[int] = frozenset(api_key_map)

#: APIs whose responses carry broker host:port that clients would otherwise dial directly.
ADDRESS_BEARING: frozenset[int] = frozenset(
    {
        ApiKey.METADATA,
        ApiKey.FIND_COORDINATOR,
        ApiKey.DESCRIBE_CLUSTER,
        ApiKey.PRODUCE,
        ApiKey.FETCH,
        ApiKey.SHARE_FETCH,
        ApiKey.SHARE_ACKNOWLEDGE,
    }
)

#: APIs whose requests name the consumer group of the connection.
GROUP_NAMING: frozenset[int] = frozenset(
    {
        ApiKey.OFFSET_COMMIT,
        ApiKey.JOIN_GROUP,
        ApiKey.HEARTBEAT,
        ApiKey.SYNC_GROUP,
        ApiKey.TXN_OFFSET_COMMIT,
        ApiKey.CONSUMER_GROUP_HEARTBEAT,
    }
)

#: Every API the proxy may decode, so its advertised versions must be ones kio can parse.
DECODED: frozenset[int] = ADDRESS_BEARING | GROUP_NAMING | {ApiKey.API_VERSIONS}


@cache
def _name(api_key: int) -> str:
    from kio.schema.index import api_key_map

    return api_key_map[api_key]


@cache
def supported_versions(api_key: int) -> tuple[int, int] | None:
    """The (min, max) version kio has schemas for, or None if kio does not know the API."""
    try:
        versions = schema_name_map[_name(api_key)]
    except KeyError:
        return None
    numbers = [v for v, types in versions.items() if EntityType.request in types]
    if not numbers:
        return None
    return min(numbers), max(numbers)


@cache
def request_schema(api_key: int, version: int) -> type:
    """The kio request class for an API version; KeyError when kio has none."""
    try:
        return load_request_schema(api_key, version)
    except Exception as exc:  # kio raises its own index errors and ImportError
        raise KeyError((api_key, version)) from exc


@cache
def response_schema(api_key: int, version: int) -> type:
    """The kio response class for an API version; KeyError when kio has none."""
    try:
        return load_response_schema(api_key, version)
    except Exception as exc:
        raise KeyError((api_key, version)) from exc


@lru_cache(maxsize=4096)  # asked for every held request; bounded against made-up versions
def request_is_flexible(api_key: int, version: int) -> bool | None:
    """Whether the request uses header v2 (flexible); None when unknown to kio."""
    try:
        return bool(request_schema(api_key, version).__flexible__)
    except KeyError:
        return None


@cache
def response_is_flexible(api_key: int, version: int) -> bool:
    """Whether the response header is v1. ApiVersions responses always use header v0."""
    if api_key == ApiKey.API_VERSIONS:
        return False
    return bool(response_schema(api_key, version).__flexible__)
