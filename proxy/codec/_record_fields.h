/* Reading a v2 record's fields without raising, shared by the fetch skim's structural read
 * (_speedups.c) and the consumer's receive spans (_receive_spans.c): a peer's bytes, where a
 * field that does not read is an answer (the caller declines or falls back), not an error. */
#ifndef KTP_RECORD_FIELDS_H
#define KTP_RECORD_FIELDS_H

#include <Python.h>
#include <stdint.h>

/* A big-endian unsigned number of n bytes (n <= 8). */
static inline uint64_t
read_be(const unsigned char *p, int n)
{
    uint64_t value = 0;
    for (int i = 0; i < n; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

/* One zig-zag varint of at most max_bytes bytes at *pos, ending before limit: 0 with the value
 * (*pos after it), or -1 when it does not end there. With within_64_bits, a payload with bits
 * past 64 is -1 too; without, such bits are dropped (lengths and counts never have them). */
static inline int
record_varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t limit, int max_bytes,
              int within_64_bits, int64_t *value)
{
    Py_ssize_t at = *pos;
    Py_ssize_t stop = at + max_bytes < limit ? at + max_bytes : limit;
    uint64_t raw = 0;
    int shift = 0;
    while (at < stop) {
        unsigned char byte = buf[at++];
        if (within_64_bits && shift == 63 && (byte & 0x7F) > 1) {
            return -1;
        }
        raw |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *value = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            *pos = at;
            return 0;
        }
        shift += 7;
    }
    return -1;
}

/* A key or value of `size` bytes (-1: null) at *pos, stepped over; -1 when it does not fit. */
static inline int
step_over(Py_ssize_t *pos, Py_ssize_t limit, int64_t size, int64_t smallest)
{
    if (size < smallest || size > limit - *pos) {
        return -1;
    }
    if (size > 0) {
        *pos += (Py_ssize_t)size;
    }
    return 0;
}

#endif
