/* Reading a v2 record's fields without raising, shared by the fetch skim's structural read
 * (_speedups.c) and the consumer's receive spans (_receive_spans.c): a peer's bytes, where a
 * field that does not read is an answer (the caller declines or falls back), not an error. And
 * the skim's test of a header: a traceparent with the sampled flag, as W3C propagators write it. */
#ifndef KTP_RECORD_FIELDS_H
#define KTP_RECORD_FIELDS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* The header key, and the length of a version-00 traceparent value ("00-<32>-<16>-<2>"). */
#define TRACEPARENT_KEY "traceparent"
#define TRACEPARENT_KEY_SIZE 11
#define TRACEPARENT_VALUE_LENGTH 55

/* A lower-case hex digit with the sampled bit (01) set. */
static inline int
is_sampled_flag_char(unsigned char c)
{
    switch (c) {
    case '1': case '3': case '5': case '7': case '9': case 'b': case 'd': case 'f':
        return 1;
    default:
        return 0;
    }
}

/* Whether the header key of `key_size` bytes at `key` and value of `value_size` bytes at `value`
 * are a traceparent with the sampled flag, in the wire form W3C propagators write. */
static inline int
is_sampled_traceparent(const unsigned char *key, int64_t key_size, const unsigned char *value,
                       int64_t value_size)
{
    return key_size == TRACEPARENT_KEY_SIZE && value_size == TRACEPARENT_VALUE_LENGTH &&
           memcmp(key, TRACEPARENT_KEY, TRACEPARENT_KEY_SIZE) == 0 &&
           is_sampled_flag_char(value[TRACEPARENT_VALUE_LENGTH - 1]);
}

#endif
