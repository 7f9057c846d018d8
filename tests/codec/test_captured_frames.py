"""The codec on frames captured from real clients talking to real brokers (tests/fixtures/captured).

Each set was recorded by tests/fixtures/capture_frames.py with a relay that shares no code with the
proxy. For every frame: its header parses as recorded; every message the proxy decodes re-encodes
to exactly the captured bytes (the proxy's guarantee that re-encoding never corrupts a message);
and the record batches of Produce requests and Fetch responses hold what the client produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from proxy.codec.apis import DECODED, ApiKey, request_is_flexible, supported_versions
from proxy.codec.compression import Codec
from proxy.codec.fetch import iter_fetched_partitions, locate_fetched_partitions
from proxy.codec.framing import SIZE_PREFIX
from proxy.codec.headers import (
    parse_request_header,
    peek_correlation_id,
    response_header_size,
    skip_tagged_fields,
)
from proxy.codec.messages import decode_request, decode_response, encode
from proxy.codec.produce import (
    iter_request_partitions,
    locate_request_partitions,
    replace_records,
    splice_located,
)
from proxy.codec.records import iter_batches

CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured"


@dataclass(frozen=True)
class CapturedFrame:
    set_name: str
    entry: dict[str, Any]
    data: bytes  # the whole frame, size prefix included

    @property
    def body(self) -> memoryview:
        return memoryview(self.data)[SIZE_PREFIX:]

    @property
    def api_key(self) -> int:
        return self.entry["api_key"]

    @property
    def api_version(self) -> int:
        return self.entry["api_version"]

    @property
    def is_request(self) -> bool:
        return self.entry["direction"] == "request"

    @property
    def id(self) -> str:
        return f"{self.set_name}/{self.entry['file'].removesuffix('.bin')}"


@cache
def captured_sets() -> dict[str, dict[str, Any]]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(CAPTURED.glob("*/index.json"))
    }


@cache
def captured_frames() -> list[CapturedFrame]:
    frames = []
    for name, index in captured_sets().items():
        for entry in index["frames"]:
            frames.append(
                CapturedFrame(name, entry, (CAPTURED / name / entry["file"]).read_bytes())
            )
    return frames


def _decodable(frame: CapturedFrame) -> bool:
    limits = supported_versions(frame.api_key)
    return (
        frame.api_key in DECODED
        and limits is not None
        and limits[0] <= frame.api_version <= limits[1]
    )


FRAMES = captured_frames()
DECODABLE = [f for f in FRAMES if _decodable(f)]
SETS = sorted(captured_sets())


def _params(frames: list[CapturedFrame]) -> list[Any]:
    return [pytest.param(f, id=f.id) for f in frames]


def test_the_captures_cover_flexible_and_non_flexible_versions_of_every_decoded_message() -> None:
    assert len(SETS) >= 4, "run tests/fixtures/capture_frames.py"
    flexibility: dict[int, set[bool]] = {}
    for frame in DECODABLE:
        if frame.is_request:
            flexible = request_is_flexible(frame.api_key, frame.api_version)
            flexibility.setdefault(frame.api_key, set()).add(bool(flexible))
    # DescribeCluster (flexible from v0) and ConsumerGroupHeartbeat have no non-flexible versions;
    # ShareFetch/ShareAcknowledge and TxnOffsetCommit are not used by the captured clients.
    for api in (ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA, ApiKey.FIND_COORDINATOR,
                ApiKey.API_VERSIONS, ApiKey.OFFSET_COMMIT, ApiKey.JOIN_GROUP,
                ApiKey.HEARTBEAT, ApiKey.SYNC_GROUP):  # fmt: skip
        assert flexibility.get(api) == {False, True}, api.name
    for api in (ApiKey.DESCRIBE_CLUSTER, ApiKey.CONSUMER_GROUP_HEARTBEAT):
        assert flexibility.get(api) == {True}, api.name


@pytest.mark.parametrize("frame", _params([f for f in FRAMES if f.is_request]))
def test_request_header_parses_as_recorded(frame: CapturedFrame) -> None:
    header = parse_request_header(frame.body)
    entry = frame.entry
    assert (header.api_key, header.api_version, header.correlation_id, header.client_id) == (
        entry["api_key"],
        entry["api_version"],
        entry["correlation_id"],
        entry["client_id"],
    )
    flexible = request_is_flexible(frame.api_key, frame.api_version)
    if flexible is None:
        assert header.size is None
        return
    client_id = entry["client_id"]
    plain_size = 10 + (len(client_id.encode()) if client_id is not None else 0)
    # Header v2 adds a tagged-field section after the client id (clients send it empty).
    assert header.size == (skip_tagged_fields(frame.body, plain_size) if flexible else plain_size)


@pytest.mark.parametrize("frame", _params([f for f in FRAMES if not f.is_request]))
def test_response_header_parses_as_recorded(frame: CapturedFrame) -> None:
    assert peek_correlation_id(frame.body) == frame.entry["correlation_id"]
    if supported_versions(frame.api_key) is None:
        return
    size = response_header_size(frame.body, frame.api_key, frame.api_version)
    flexible = frame.api_key != ApiKey.API_VERSIONS and request_is_flexible(
        frame.api_key, frame.api_version
    )
    assert size == (5 if flexible else 4)  # brokers send an empty tagged-field section


@pytest.mark.parametrize("frame", _params(DECODABLE))
def test_decoded_message_re_encodes_to_the_captured_bytes(frame: CapturedFrame) -> None:
    if frame.is_request:
        header_size = parse_request_header(frame.body).size
        assert header_size is not None
        payload = decode_request(frame.api_key, frame.api_version, frame.body, header_size)
    else:
        header_size, payload = decode_response(frame.api_key, frame.api_version, frame.body)
    assert encode(payload) == bytes(frame.body[header_size:])


# -- record batches ----------------------------------------------------------------------------

_CODECS = {
    "none": Codec.NONE,
    "gzip": Codec.GZIP,
    "snappy": Codec.SNAPPY,
    "lz4": Codec.LZ4,
    "zstd": Codec.ZSTD,
}

Record = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]


def _expected(set_name: str) -> list[Record]:
    return [
        (
            None if r["key"] is None else r["key"].encode(),
            None if r["value"] is None else r["value"].encode(),
            tuple((k, None if v is None else v.encode()) for k, v in r["headers"]),
        )
        for r in captured_sets()[set_name]["produced"]
    ]


def _payloads(set_name: str, api_key: int, request: bool) -> list[Any]:
    payloads = []
    for frame in DECODABLE:
        if frame.set_name != set_name or frame.api_key != api_key or frame.is_request != request:
            continue
        if request:
            header_size = parse_request_header(frame.body).size
            payloads.append(
                decode_request(frame.api_key, frame.api_version, frame.body, header_size)
            )
        else:
            payloads.append(decode_response(frame.api_key, frame.api_version, frame.body)[1])
    return payloads


@pytest.mark.parametrize("set_name", SETS)
def test_produce_requests_hold_the_records_the_client_sent(set_name: str) -> None:
    codec = _CODECS[captured_sets()[set_name]["compression"]]
    records: list[Record] = []
    codecs = set()
    for payload in _payloads(set_name, ApiKey.PRODUCE, request=True):
        for partition in iter_request_partitions(payload):
            assert partition.records is not None
            for batch in iter_batches(partition.records):
                codecs.add(batch.compression)
                assert (batch.magic, batch.base_offset) == (2, 0)
                assert batch.crc_is_valid()
                records += [(r.key, r.value, r.headers) for r in batch.records()]
    # librdkafka sends a batch uncompressed when compressing it would not make it smaller.
    assert codec in codecs and codecs <= {codec, Codec.NONE}
    assert records == _expected(set_name)


@pytest.mark.parametrize("set_name", SETS)
def test_fetch_responses_hold_the_records_the_client_produced(set_name: str) -> None:
    by_offset: dict[int, Record] = {}
    for payload in _payloads(set_name, ApiKey.FETCH, request=False):
        for partition in iter_fetched_partitions(payload):
            assert partition.error_code == 0
            for batch in iter_batches(partition.records):
                assert batch.crc_is_valid()
                if batch.is_control:
                    continue
                for record in batch.records():
                    by_offset[record.offset] = (record.key, record.value, record.headers)
    assert [by_offset[offset] for offset in sorted(by_offset)] == _expected(set_name)


PRODUCE_REQUESTS = [f for f in DECODABLE if f.is_request and f.api_key == ApiKey.PRODUCE]


@pytest.mark.parametrize("frame", _params(PRODUCE_REQUESTS))
def test_the_walk_finds_the_partitions_kio_decodes(frame: CapturedFrame) -> None:
    header = parse_request_header(frame.body)
    assert header.size is not None
    layout = locate_request_partitions(frame.body, header.size, frame.api_version)
    payload = decode_request(frame.api_key, frame.api_version, frame.body, header.size)
    assert layout is not None
    assert layout.transactional_id == payload.transactional_id
    found = [p._replace(records=_bytes_or_none(p.records)) for p in layout.partitions]
    assert found == list(iter_request_partitions(payload))
    assert found and all(p.records for p in found)


@pytest.mark.parametrize("frame", _params(PRODUCE_REQUESTS))
def test_records_replaced_by_position_give_the_bytes_kio_would_encode(frame: CapturedFrame) -> None:
    header = parse_request_header(frame.body)
    assert header.size is not None
    layout = locate_request_partitions(frame.body, header.size, frame.api_version)
    assert layout is not None
    # A longer replacement for the first partition: its length prefix changes size too.
    first = layout.partitions[0]
    replacements = {(first.topic_index, first.partition_index): b"\x07" * 200}
    spliced = splice_located(frame.body, layout, frame.api_version, replacements)
    payload = decode_request(frame.api_key, frame.api_version, frame.body, header.size)
    expected = bytes(frame.body[: header.size]) + encode(replace_records(payload, replacements))
    assert spliced == len(expected).to_bytes(SIZE_PREFIX, "big") + expected
    assert splice_located(frame.body, layout, frame.api_version, {}) == frame.data


def test_a_produce_request_cut_short_has_no_layout() -> None:
    frame = PRODUCE_REQUESTS[0]
    header = parse_request_header(frame.body)
    assert header.size is not None
    for cut in (1, 10, len(frame.body) // 2):
        assert locate_request_partitions(frame.body[:-cut], header.size, frame.api_version) is None


def _bytes_or_none(records: object) -> bytes | None:
    return None if records is None else bytes(records)  # type: ignore[call-overload]


FETCH_RESPONSES = [f for f in DECODABLE if not f.is_request and f.api_key == ApiKey.FETCH]


@pytest.mark.parametrize("frame", _params(FETCH_RESPONSES))
def test_the_walk_finds_the_fetched_partitions_kio_decodes(frame: CapturedFrame) -> None:
    located = locate_fetched_partitions(frame.body, frame.api_version)
    assert located is not None
    _, payload = decode_response(frame.api_key, frame.api_version, frame.body)
    expected = list(iter_fetched_partitions(payload))
    assert [p.__class__(**{**_fields(p), "records": bytes(p.records)}) for p in located] == expected
    # The records are views of the frame, not copies.
    assert all(isinstance(p.records, memoryview) for p in located)


def _fields(value: object) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
