"""The producer's fast path: a new root context for every record of a whole batch, in one pass.

Nearly every traced Produce request carries, per partition, one uncompressed batch of records
without headers (ProducerPerformance, librdkafka's and the Java client's defaults). For those,
drawing the contexts, adding one `traceparent` header to each record and re-signing the batch
is one call (`_speedups.c` has the compiled twin) instead of the general batch-by-batch path of
`ProducePartition.inject`, whose result it equals for the same random draw. Anything else
(compressed, control, several batches, records that already have headers, a batch too large
for the headers, a CRC that is already wrong) is answered None and left to that general path,
which knows how to say what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..codec import native
from ..codec.records import (
    ATTRIBUTES_OFFSET,
    CODEC_MASK,
    CONTROL_FLAG,
    CRC_OFFSET,
    LOG_OVERHEAD,
    MAGIC_OFFSET,
    MIN_RECORD_SIZE,
    RECORDS_OFFSET,
    RecordBatchError,
    splice_one_header_each_python,
)
from .traceparent import VALUE_LENGTH, WIRE_PREFIX, root_traceparents_python

#: A traceparent header in wire form, as each record gains it.
ROOT_HEADER_SIZE = len(WIRE_PREFIX) + VALUE_LENGTH
#: Random bytes per context: 16 of trace id, 8 of span id.
RANDOM_PER_ROOT = 24
_HEADER = struct.Struct(">qi")
_COUNT = struct.Struct(">i")
_CRC = struct.Struct(">I")

#: (new batch, record count, [(index, trace id, span id, record start)] of the sampled records,
#: the start counted in the original batch's records section).
Injected = tuple[bytes, int, list[tuple[int, int, int, int]]]


def inject_roots_python(
    records: bytes | memoryview,
    draw: Callable[[int], bytes],
    threshold: bytes | None,
    crc: Callable[..., int],
    max_batch_bytes: int,
) -> Injected | None:
    """`records` as one re-signed batch with a new root traceparent on every record, or None
    when they are not one whole uncompressed batch of records without headers that stays
    within `max_batch_bytes`. `draw(n)` gives n random bytes; `crc` is CRC-32C."""
    view = memoryview(records)
    size = len(view)
    if size < RECORDS_OFFSET:
        return None
    _, batch_length = _HEADER.unpack_from(view, 0)
    attributes = view[ATTRIBUTES_OFFSET + 1]
    if (
        batch_length + LOG_OVERHEAD != size
        or view[MAGIC_OFFSET] != 2
        or attributes & CODEC_MASK
        or attributes & CONTROL_FLAG
    ):
        return None
    count = _COUNT.unpack_from(view, RECORDS_OFFSET - 4)[0]
    body = view[RECORDS_OFFSET:]
    if (
        count <= 0
        or count > len(body) // MIN_RECORD_SIZE
        or size + count * ROOT_HEADER_SIZE > max_batch_bytes
        or crc(view[ATTRIBUTES_OFFSET:]) != _CRC.unpack_from(view, CRC_OFFSET)[0]
    ):
        return None
    drawn = draw(count * RANDOM_PER_ROOT)
    for at in range(0, len(drawn), RANDOM_PER_ROOT):
        if not any(drawn[at : at + 16]) or not any(drawn[at + 16 : at + RANDOM_PER_ROOT]):
            return None  # an invalid (all-zero) id: the general path draws again
    headers, sampled = root_traceparents_python(drawn, threshold)
    starts: list[int] = []
    new_body = splice_one_header_each_python(body, headers, [s[0] for s in sampled], starts)
    if new_body is None or RECORDS_OFFSET + len(new_body) > max_batch_bytes:
        return None
    header = bytearray(view[:RECORDS_OFFSET])
    _COUNT.pack_into(header, 8, RECORDS_OFFSET - LOG_OVERHEAD + len(new_body))
    _CRC.pack_into(header, CRC_OFFSET, crc(new_body, crc(header[ATTRIBUTES_OFFSET:])))
    return (
        bytes(header) + new_body,
        count,
        [(*ids, start) for ids, start in zip(sampled, starts, strict=True)],
    )


#: The fast path the producer runs: the compiled twin when the extension is built.
inject_roots = native.twin("inject_roots", inject_roots_python, error=RecordBatchError)
