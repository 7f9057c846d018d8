"""The producer's fast path: both twins agree, and the tracer's result through it is the
general path's result for the same random draw."""

from __future__ import annotations

import random
from typing import Any

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.tracing.producer as producer_module
from proxy.codec import native
from proxy.codec.records import RecordBatchError, iter_batches
from proxy.interceptors import ProducePartition, ProduceResult
from proxy.tracing.roots import ROOT_HEADER_SIZE, inject_roots, inject_roots_python
from proxy.tracing.traceparent import parse_traceparent

from .test_interceptors import Harness, build_batch

compiled = pytest.mark.skipif(native.compiled is None, reason="extension not built")
ONE_PERCENT = b"028f5c28f5c28f5c"


def _plain(count: int, size: int = 20) -> bytes:
    return build_batch([(b"k%d" % i if i % 2 else None, b"v" * size, []) for i in range(count)])


def _both(records: bytes, threshold: bytes | None, limit: int = 1 << 20, seed: int = 1) -> Any:
    results = []
    for twin in (native.compiled.inject_roots, inject_roots_python):  # type: ignore[union-attr]
        draw = random.Random(seed).randbytes
        try:
            results.append(twin(records, draw, threshold, crc32c.crc32c, limit))
        except (ValueError, RecordBatchError) as exc:
            results.append(("raised", str(exc)))
    assert results[0] == results[1]
    return results[0]


@compiled
@pytest.mark.parametrize("count", [1, 2, 15, 200])
@pytest.mark.parametrize("threshold", [None, ONE_PERCENT, b"8000000000000000"])
def test_both_twins_give_the_same_batch_and_sampled_records(
    count: int, threshold: bytes | None
) -> None:
    records = _plain(count, size=1024 if count < 20 else 30)
    rebuilt, counted, sampled = _both(records, threshold)
    assert counted == count
    (batch,) = iter_batches(rebuilt)
    assert batch.crc_is_valid()
    contexts = [parse_traceparent(dict(r.headers)["traceparent"]) for r in batch.records()]
    assert [i for i, c in enumerate(contexts) if c and c[2]] == [s[0] for s in sampled]
    assert all(
        c is not None and c[:2] == s[1:3]
        for c, s in zip([contexts[s[0]] for s in sampled], sampled, strict=True)
    )


@compiled
@pytest.mark.parametrize(
    "case",
    [
        "compressed",
        "two batches",
        "record with headers",
        "too large",
        "wrong crc",
        "control batch",
        "cut short",
        "empty",
    ],
)
def test_anything_but_one_plain_batch_is_left_to_the_general_path(case: str) -> None:
    records = _plain(3)
    limit = 1 << 20
    if case == "compressed":
        records = build_batch([(None, b"v" * 20, [])] * 3, codec=1)
    elif case == "two batches":
        records += _plain(2)
    elif case == "record with headers":
        records = build_batch([(None, b"v", []), (None, b"w", [("h", b"1")])])
    elif case == "too large":
        limit = len(records) + 3 * ROOT_HEADER_SIZE - 1
    elif case == "wrong crc":
        records = records[:-1] + bytes([records[-1] ^ 1])
    elif case == "control batch":
        changed = bytearray(records)
        changed[22] |= 0x20
        records = bytes(changed)
    elif case == "cut short":
        records = records[:-1]
    else:
        records = b""
    assert _both(records, None, limit) is None


@compiled
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2000), st.sampled_from([None, ONE_PERCENT]))
def test_both_twins_agree_on_damaged_batches(damage: bytes, at: int, threshold: Any) -> None:
    records = bytearray(_plain(4))
    for offset, byte in enumerate(damage[:8]):
        records[(at + 37 * offset) % len(records)] = byte
    if at % 2:  # re-signed, so that the damage reaches the records
        records[17:21] = crc32c.crc32c(bytes(records[21:])).to_bytes(4, "big")
    _both(bytes(records), threshold)


@compiled
def test_a_draw_of_an_all_zero_id_is_left_to_the_general_path() -> None:
    for twin in (native.compiled.inject_roots, inject_roots_python):  # type: ignore[union-attr]
        zero = twin(_plain(2), lambda n: bytes(n), None, crc32c.crc32c, 1 << 20)
        assert zero is None


def _traced(records: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    h = Harness("traceidratio", "0.3")
    if not fast:
        monkeypatch.setattr(producer_module, "inject_roots", lambda *args: None)
    random.seed(11)
    partition = ProducePartition(
        topic="orders", topic_id=None, partition=2, acks=-1, transactional_id=None, records=records
    )
    state = h.producer.on_produce_request(h.ctx, partition)
    h.producer.on_produce_response(h.ctx, state, ProduceResult("orders", 2, 0, None, 500, None))
    spans = sorted(
        (s.context.trace_id, s.context.span_id, dict(s.attributes or {})) for s in h.spans()
    )
    counts = {
        dict(labels)["outcome"]: value
        for kind, name, labels, value in h.metrics.samples()
        if name == "records_traced"
    }
    monkeypatch.undo()
    return partition.replaced_records, spans, counts


@pytest.mark.parametrize("count", [1, 7, 40])
def test_the_fast_path_traces_exactly_as_the_general_path(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _plain(count)
    fast = _traced(records, True, monkeypatch)
    assert fast == _traced(records, False, monkeypatch)
    rebuilt, spans, counts = fast
    assert rebuilt is not None and counts["sampled"] + counts.get("unsampled", 0) == count
    assert len(spans) == counts["sampled"]


def test_the_fast_path_is_taken_for_a_plain_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []

    def spy(*args: Any) -> Any:
        taken.append(True)
        return inject_roots(*args)

    monkeypatch.setattr(producer_module, "inject_roots", spy)
    _traced(_plain(3), True, monkeypatch)
    assert taken == [True]
