/* Compiled versions of the loops that run once per record or message on the proxy's hot path.
 *
 * Each function does exactly what its pure-Python twin does (same results, the same inputs
 * refused), only faster; the Python modules fall back to the twins when this extension is not
 * built. The twins, which document the logic:
 *
 *   sampled_traceparent_positions  proxy/tracing/skim.py         (find sampled contexts in records)
 *   sampled_record_starts          proxy/tracing/skim.py         (the records holding them)
 *   skim_batches                   proxy/tracing/skim.py         (the fetch skim over a partition)
 *   read_record                    proxy/codec/records.py        (one record's fields)
 *   splice_one_header_each         proxy/codec/records.py        (append_header_to_each's loop)
 *   root_traceparents              proxy/tracing/traceparent.py  (new contexts for a batch)
 *   inject_roots                   proxy/tracing/roots.py        (contexts into a whole batch)
 *   inject_request_roots           proxy/tracing/roots.py        (in _request_roots.c: the same
 *                                                                 for a whole Produce request)
 *   skim_fetch_response            proxy/tracing/skim.py         (in _fetch_skim.c: the skim of
 *                                                                 a whole Fetch response)
 *   skim_fetch_frame               proxy/tracing/skim.py         (in _fetch_skim.c: the same for
 *                                                                 a frame, the fetch lane)
 *   receive_spans                  proxy/tracing/receive.py      (in _receive_spans.c: a
 *                                                                 partition's receive spans in
 *                                                                 OTLP wire form)
 *   walk_schema                    proxy/codec/guard.py          (in _schema_walk.c: the message
 *                                                                 walk before decoding)
 *   PairingCore                    proxy/codec/pairing.py        (in _pairing.c: framing and
 *                                                                 pairing of a connection)
 *
 * The input is a peer's bytes: every read is bounds-checked, malformed input raises ValueError
 * (the callers turn it into RecordBatchError or ProtocolError), and, PairingCore aside (one per
 * connection, by design), nothing here keeps a reference or state.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_pairing.h"
#include "_request_roots.h"
#include "_roots.h"
#include "_fetch_skim.h"
#include "_receive_spans.h"
#include "_record_fields.h"
#include "_schema_walk.h"

/* "\x16traceparent\x6e": zig-zag varint 11, the key, zig-zag varint 55 (the value length). */
static const unsigned char WIRE_PREFIX[] = "\x16traceparent\x6e";
#define WIRE_PREFIX_SIZE 13
/* From the start of the prefix to the last character of the flags ("00-<32>-<16>-0X"). */
#define FLAGS_LAST_CHAR (WIRE_PREFIX_SIZE + 55 - 1)

#define MAX_VARINT_BYTES 5
#define MAX_VARLONG_BYTES 10

/* Where in data[pos:end) the next traceparent header with the sampled flag may start, or -1.
 * Prefixes without the flag are passed over (the prefix cannot overlap itself). */
static Py_ssize_t
next_sampled_prefix(const unsigned char *data, Py_ssize_t pos, Py_ssize_t end)
{
    while (end - pos >= WIRE_PREFIX_SIZE) {
        const unsigned char *hit = memchr(data + pos, WIRE_PREFIX[0],
                                          (size_t)(end - pos - WIRE_PREFIX_SIZE + 1));
        if (hit == NULL) {
            return -1;
        }
        pos = hit - data;
        if (memcmp(hit + 1, WIRE_PREFIX + 1, WIRE_PREFIX_SIZE - 1) != 0) {
            pos += 1;
            continue;
        }
        Py_ssize_t flags_at = pos + FLAGS_LAST_CHAR;
        if (flags_at < end && is_sampled_flag_char(data[flags_at])) {
            return pos;
        }
        pos += WIRE_PREFIX_SIZE;
    }
    return -1;
}

static int
append_ssize(PyObject *list, Py_ssize_t value)
{
    PyObject *item = PyLong_FromSsize_t(value);
    if (item == NULL) {
        return -1;
    }
    int result = PyList_Append(list, item);
    Py_DECREF(item);
    return result;
}

/* The window [start, end) of a buffer a scan was given: negative bounds are refused, as the
 * twins refuse them (no from-the-end indexing), with the buffer released; an end past the data
 * means the end of the data. 0, or -1 with ValueError. */
static int
window_of(Py_buffer *view, Py_ssize_t start, Py_ssize_t *end)
{
    if (start < 0 || *end < 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "start and end must not be negative");
        return -1;
    }
    if (*end > view->len) {
        *end = view->len;
    }
    return 0;
}

PyDoc_STRVAR(sampled_traceparent_positions_doc,
"sampled_traceparent_positions(data, start, end) -> list[int]\n\n"
"Where in data[start:end] a traceparent header with the sampled flag may start.");

static PyObject *
sampled_traceparent_positions(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end)) {
        return NULL;
    }
    const unsigned char *data = view.buf;
    if (window_of(&view, start, &end) < 0) {
        return NULL;
    }
    PyObject *positions = PyList_New(0);
    if (positions == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t pos = next_sampled_prefix(data, start, end);
    while (pos >= 0) {
        if (append_ssize(positions, pos) < 0) {
            Py_DECREF(positions);
            PyBuffer_Release(&view);
            return NULL;
        }
        pos = next_sampled_prefix(data, pos + WIRE_PREFIX_SIZE, end);
    }
    PyBuffer_Release(&view);
    return positions;
}

/* One zig-zag varint of at most max_bytes bytes at *pos, ending before limit. 0 on success
 * (value decoded, *pos after it), -1 with ValueError set, -2 (nothing set) for a 10-byte
 * varlong whose value needs more than 64 bits, which only the Python twin can hold. */
static int
read_varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t limit, int max_bytes,
            int64_t *value)
{
    Py_ssize_t at = *pos;
    Py_ssize_t stop = at + max_bytes;
    if (stop > limit) {
        stop = limit;
    }
    uint64_t raw = 0;
    int shift = 0;
    while (at < stop) {
        unsigned char byte = buf[at++];
        if (shift == 63 && byte > 1 && byte < 0x80) { /* a last byte with bits past 64 */
            return -2;
        }
        raw |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *value = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            *pos = at;
            return 0;
        }
        shift += 7;
    }
    if (stop - *pos < max_bytes) {
        PyErr_SetString(PyExc_ValueError, "truncated varint");
    }
    else {
        PyErr_Format(PyExc_ValueError, "varint longer than %d bytes", max_bytes);
    }
    return -1;
}

static Py_ssize_t
write_varint(unsigned char *out, int64_t value)
{
    uint64_t raw = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    Py_ssize_t n = 0;
    while (raw >= 0x80) {
        out[n++] = (unsigned char)((raw & 0x7F) | 0x80);
        raw >>= 7;
    }
    out[n++] = (unsigned char)raw;
    return n;
}

static PyObject *
past_the_batch(void)
{
    PyErr_SetString(PyExc_ValueError, "record fields run past the batch");
    return NULL;
}

/* The body of splice_one_header_each, with every buffer already acquired: record i of `body`
 * gets the header added[i] (added_size[i] bytes). Returns the new body (a bytes object) after
 * `reserve` bytes left for the caller to fill, Py_None (new reference) when a record has
 * headers or trailing bytes, or NULL with an exception set. starts receives the positions of
 * the wanted records (`wanted`: a list or tuple of ascending ints). */
static PyObject *
splice(const unsigned char *body, Py_ssize_t limit, Py_ssize_t count, const char *const *added,
       const Py_ssize_t *added_size, PyObject *wanted, PyObject *starts, Py_ssize_t reserve)
{
    Py_ssize_t wanted_count = PySequence_Fast_GET_SIZE(wanted);
    PyObject **wanted_items = PySequence_Fast_ITEMS(wanted);

    Py_ssize_t extra = reserve;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Room for the header and a longer length varint (10 bytes at most). */
        if (added_size[i] > PY_SSIZE_T_MAX - 10 - extra) {
            return PyErr_NoMemory();
        }
        extra += added_size[i] + 10;
    }
    if (limit > PY_SSIZE_T_MAX - extra) {
        return PyErr_NoMemory();
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, limit + extra);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result) + reserve;
    Py_ssize_t written = 0;

    Py_ssize_t next_wanted_index = 0;
    Py_ssize_t next_wanted = -1;
    if (wanted_count) {
        next_wanted = PyLong_AsSsize_t(wanted_items[0]);
        if (next_wanted == -1 && PyErr_Occurred()) {
            goto fail;
        }
    }
    Py_ssize_t pos = 0;
    for (Py_ssize_t index = 0; index < count; index++) {
        if (index == next_wanted) {
            PyObject *at = PyLong_FromSsize_t(pos);
            if (at == NULL || PyList_Append(starts, at) < 0) {
                Py_XDECREF(at);
                goto fail;
            }
            Py_DECREF(at);
            next_wanted_index++;
            next_wanted = -1;
            if (next_wanted_index < wanted_count) {
                next_wanted = PyLong_AsSsize_t(wanted_items[next_wanted_index]);
                if (next_wanted == -1 && PyErr_Occurred()) {
                    goto fail;
                }
            }
        }
        if (pos >= limit) {
            past_the_batch();
            goto fail;
        }
        int64_t length;
        Py_ssize_t start = pos;
        if (read_varint(body, &start, limit, MAX_VARINT_BYTES, &length) < 0) {
            goto fail;
        }
        if (length <= 0 || length > limit - start) {
            PyErr_Format(PyExc_ValueError, "record length %lld does not fit the batch",
                         (long long)length);
            goto fail;
        }
        Py_ssize_t end = start + (Py_ssize_t)length;
        Py_ssize_t field = start + 1; /* attributes */
        for (int varint = 0; varint < 2; varint++) { /* timestamp delta, offset delta */
            while (field < limit && (body[field] & 0x80)) {
                field++;
            }
            if (field >= limit) {
                past_the_batch();
                goto fail;
            }
            field++;
        }
        for (int sized = 0; sized < 2; sized++) { /* key, then value: length and bytes */
            if (field >= limit) {
                past_the_batch();
                goto fail;
            }
            int64_t size;
            if (body[field] < 0x80) {
                size = (body[field] >> 1) ^ -(int64_t)(body[field] & 1);
                field++;
            } else if (sized == 1 && field + 1 < limit && body[field + 1] < 0x80) {
                /* The twin reads a two-byte value length past the record's end too. */
                uint64_t raw = (uint64_t)(body[field] & 0x7F) | ((uint64_t)body[field + 1] << 7);
                size = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
                field += 2;
            } else if (sized == 1 && field + 1 >= limit) {
                past_the_batch();
                goto fail;
            } else if (read_varint(body, &field, end, MAX_VARINT_BYTES, &size) < 0) {
                goto fail;
            }
            if (size >= 0) {
                if (size > limit) { /* far past the record: refused below either way */
                    size = limit;
                }
                field += (Py_ssize_t)size;
            }
        }
        if (field != end - 1 || body[field] != 0) {
            if (field >= end) {
                PyErr_SetString(PyExc_ValueError, "record fields run past the record");
                goto fail;
            }
            Py_DECREF(result);
            Py_RETURN_NONE; /* the record has headers (or trailing bytes): the general path */
        }
        written += write_varint(out + written, length + added_size[index]);
        memcpy(out + written, body + start, (size_t)(field - start));
        written += field - start;
        out[written++] = 0x02; /* header count 1, zig-zag */
        memcpy(out + written, added[index], (size_t)added_size[index]);
        written += added_size[index];
        pos = end;
    }
    if (pos != limit) {
        PyErr_Format(PyExc_ValueError, "%zd bytes left after %zd records", limit - pos, count);
        goto fail;
    }
    if (_PyBytes_Resize(&result, reserve + written) < 0) {
        return NULL;
    }
    return result;

fail:
    Py_DECREF(result);
    return NULL;
}

/* records.py's first_record_has_headers: 1 only when the first record plainly has headers (or
 * bytes after its fields); anything odd is 0, and left to the splice. */
static int
first_record_has_headers(const unsigned char *body, Py_ssize_t limit)
{
    int64_t length, size;
    Py_ssize_t start = 0;
    if (read_varint(body, &start, limit, MAX_VARINT_BYTES, &length) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (length <= 0 || length > limit - start) {
        return 0;
    }
    Py_ssize_t end = start + (Py_ssize_t)length;
    Py_ssize_t field = start + 1; /* attributes */
    for (int i = 0; i < 4; i++) { /* timestamp and offset deltas; key and value */
        if (read_varint(body, &field, end, MAX_VARINT_BYTES, &size) < 0) {
            PyErr_Clear();
            return 0;
        }
        if (i >= 2 && size > 0) {
            if (size > end) {
                return 0;
            }
            field += (Py_ssize_t)size;
        }
    }
    return field < end && (field != end - 1 || body[field] != 0);
}

PyDoc_STRVAR(splice_one_header_each_doc,
"splice_one_header_each(body, encoded, wanted, starts) -> bytes | None\n\n"
"The records of body with encoded[i] (one header in wire form) added to record i; the\n"
"positions of the records at the wanted indices are appended to the list `starts`.\n"
"Preconditions (the twin's callers meet them too): encoded holds bytes, wanted ascending\n"
"ints, starts an empty list of its own.");

static PyObject *
splice_one_header_each(PyObject *module, PyObject *args)
{
    Py_buffer view;
    PyObject *encoded_arg, *wanted_arg, *starts;
    if (!PyArg_ParseTuple(args, "y*OOO!", &view, &encoded_arg, &wanted_arg, &PyList_Type,
                          &starts)) {
        return NULL;
    }
    if (starts == encoded_arg || starts == wanted_arg) {
        /* Appending to starts must not move the items of a list this function reads. */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "starts must be a list of its own");
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *encoded = PySequence_Fast(encoded_arg, "encoded must be a sequence");
    PyObject *wanted = encoded ? PySequence_Fast(wanted_arg, "wanted must be a sequence") : NULL;
    if (encoded != NULL && wanted != NULL) {
        Py_ssize_t count = PySequence_Fast_GET_SIZE(encoded);
        PyObject **items = PySequence_Fast_ITEMS(encoded);
        const char **added = PyMem_Malloc(sizeof(char *) * (size_t)(count ? count : 1));
        Py_ssize_t *sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
        if (added == NULL || sizes == NULL) {
            PyErr_NoMemory();
        }
        else {
            Py_ssize_t i = 0;
            for (; i < count && PyBytes_Check(items[i]); i++) {
                added[i] = PyBytes_AS_STRING(items[i]);
                sizes[i] = PyBytes_GET_SIZE(items[i]);
            }
            if (i < count) {
                PyErr_SetString(PyExc_TypeError, "encoded headers must be bytes");
            }
            else {
                result = splice(view.buf, view.len, count, added, sizes, wanted, starts, 0);
            }
        }
        PyMem_Free(added);
        PyMem_Free(sizes);
    }
    Py_XDECREF(wanted);
    Py_XDECREF(encoded);
    PyBuffer_Release(&view);
    return result;
}

/* One root context: "\x16traceparent\x6e" "00-" 32 hex "-" 16 hex "-0X". */
#define ROOT_HEADER_SIZE (WIRE_PREFIX_SIZE + 55)
#define RANDOM_PER_ROOT 24 /* 16 bytes of trace id, 8 of span id */

/* --- record batch layout (records.py), for skim_batches and inject_roots ------------------ */

#define LOG_OVERHEAD 12
#define MAGIC_OFFSET 16
#define ATTRIBUTES_OFFSET 21
#define LAST_OFFSET_DELTA_OFFSET 23
#define RECORD_COUNT_OFFSET 57
#define RECORDS_OFFSET 61
#define MIN_LEGACY_MESSAGE_SIZE 14
#define CODEC_MASK 0x07
#define CONTROL_FLAG 0x20
#define CRC_OFFSET 17
#define MIN_RECORD_SIZE 7


/* record_starts_holding (records.py) with the hits found as the records are stepped over:
 * appends to `starts` where, relative to body_start, each record of data[body_start:end) that
 * holds a sampled prefix begins. `hit` is the first such prefix. 0, or -1 with ValueError. */
static int
starts_holding_hits(const unsigned char *data, Py_ssize_t body_start, Py_ssize_t end,
                    int32_t record_count, Py_ssize_t hit, PyObject *starts)
{
    if (record_count < 0) {
        PyErr_Format(PyExc_ValueError, "negative record count %d", (int)record_count);
        return -1;
    }
    Py_ssize_t pos = body_start;
    for (int32_t i = 0; i < record_count && hit >= 0; i++) {
        if (pos >= end) {
            PyErr_Format(PyExc_ValueError, "batch holds fewer than %d records", (int)record_count);
            return -1;
        }
        Py_ssize_t record_start = pos;
        int64_t length;
        if (read_varint(data, &record_start, end, MAX_VARINT_BYTES, &length) < 0) {
            return -1;
        }
        if (length <= 0 || length > end - record_start) {
            PyErr_Format(PyExc_ValueError, "record length %lld does not fit the batch",
                         (long long)length);
            return -1;
        }
        Py_ssize_t record_end = record_start + (Py_ssize_t)length;
        if (hit < record_end) {
            if (append_ssize(starts, pos - body_start) < 0) {
                return -1;
            }
            /* Prefixes cannot overlap, so a fresh search from here finds the twin's next hit. */
            hit = next_sampled_prefix(data, record_end, end);
        }
        pos = record_end;
    }
    return 0;
}

/* record_varint (_record_fields.h) as the structural read below takes it: a failure is no error,
 * and lengths never have bits past 64. */
static int
quiet_varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t limit, int max_bytes,
             int64_t *value)
{
    return record_varint(buf, pos, limit, max_bytes, 0, value);
}

/* sampled_record_starts' structural read (skim.py): the records of data[body_start:end) read
 * one by one, each one's headers found by the length prefixes, so payload bytes are never
 * searched. 1 when the body is exactly record_count well-formed records, with *starts a new
 * list of where (relative to body_start) those holding a sampled traceparent header begin, or
 * NULL for none; 0 (*starts NULL) when it is not; -1 with an exception (memory). */
static int
read_sampled_starts(const unsigned char *data, Py_ssize_t body_start, Py_ssize_t end,
                    int32_t record_count, PyObject **starts)
{
    *starts = NULL;
    if (record_count < 0) {
        return 0;
    }
    Py_ssize_t pos = body_start;
    for (int32_t i = 0; i < record_count; i++) {
        Py_ssize_t at = pos;
        int64_t length, skipped, key_size, value_size, header_count;
        if (at >= end || quiet_varint(data, &at, end, MAX_VARINT_BYTES, &length) < 0
            || length <= 0 || length > end - at) {
            goto malformed;
        }
        Py_ssize_t record_end = at + (Py_ssize_t)length;
        at += 1; /* attributes */
        if (quiet_varint(data, &at, record_end, MAX_VARLONG_BYTES, &skipped) < 0 /* timestamp */
            || quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &skipped) < 0 /* offset */
            || quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &key_size) < 0
            || step_over(&at, record_end, key_size, -1) < 0
            || quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &value_size) < 0
            || step_over(&at, record_end, value_size, -1) < 0
            || quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &header_count) < 0
            || header_count < 0) {
            goto malformed;
        }
        int sampled = 0;
        for (int64_t h = 0; h < header_count; h++) {
            if (quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &key_size) < 0) {
                goto malformed;
            }
            const unsigned char *key = data + at;
            if (step_over(&at, record_end, key_size, 0) < 0
                || quiet_varint(data, &at, record_end, MAX_VARINT_BYTES, &value_size) < 0) {
                goto malformed;
            }
            const unsigned char *value = data + at;
            if (step_over(&at, record_end, value_size, -1) < 0) {
                goto malformed;
            }
            sampled |= is_sampled_traceparent(key, key_size, value, value_size);
        }
        if (at != record_end) {
            goto malformed;
        }
        if (sampled) {
            if (*starts == NULL && (*starts = PyList_New(0)) == NULL) {
                return -1;
            }
            if (append_ssize(*starts, pos - body_start) < 0) {
                Py_CLEAR(*starts);
                return -1;
            }
        }
        pos = record_end;
    }
    if (pos == end) {
        return 1;
    }
malformed:
    Py_CLEAR(*starts);
    return 0;
}

/* sampled_record_starts (skim.py): the structural read, or, for a body it cannot read, where
 * the byte search's hits lie (record_starts_holding). 0 with *starts a new list or NULL for
 * none, or -1 with ValueError. */
static int
sampled_starts(const unsigned char *data, Py_ssize_t body_start, Py_ssize_t end,
               int32_t record_count, PyObject **starts)
{
    int read = read_sampled_starts(data, body_start, end, record_count, starts);
    if (read != 0) {
        return read < 0 ? -1 : 0;
    }
    Py_ssize_t hit = next_sampled_prefix(data, body_start, end);
    if (hit < 0) {
        return 0;
    }
    *starts = PyList_New(0);
    if (*starts == NULL
        || starts_holding_hits(data, body_start, end, record_count, hit, *starts) < 0) {
        Py_CLEAR(*starts);
        return -1;
    }
    if (PyList_GET_SIZE(*starts) == 0) {
        Py_CLEAR(*starts);
    }
    return 0;
}

PyDoc_STRVAR(sampled_record_starts_doc,
"sampled_record_starts(data, start, end, record_count) -> list[int]\n\n"
"Where the records of the batch body data[start:end] holding a sampled traceparent begin.");

static PyObject *
sampled_record_starts(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, end;
    int record_count;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nni", &view, &start, &end, &record_count)) {
        return NULL;
    }
    if (window_of(&view, start, &end) < 0) {
        return NULL;
    }
    PyObject *starts;
    int failed = sampled_starts(view.buf, start, end, record_count, &starts);
    PyBuffer_Release(&view);
    if (failed) {
        return NULL;
    }
    return starts != NULL ? starts : PyList_New(0);
}

PyDoc_STRVAR(skim_batches_doc,
"skim_batches(records) -> (highest_offset, record_count, wanted)\n\n"
"A partition's data batches skimmed for records that may carry a sampled traceparent.");

PyObject *
skim_batches_in(const unsigned char *data, Py_ssize_t total, int until_wanted)
{
    /* The highest base offset + last offset delta, kept exact: a peer's int64s may overflow. */
    __int128 highest = -1;
    int64_t highest_base = -1, highest_delta = 0;
    long long record_count = 0;
    PyObject *starts = NULL;
    PyObject *wanted = PyList_New(0);
    if (wanted == NULL) {
        goto fail;
    }
    Py_ssize_t pos = 0;
    while (total - pos >= LOG_OVERHEAD) {
        const unsigned char *batch = data + pos;
        int32_t batch_length = (int32_t)read_be(batch + 8, 4);
        if (batch_length < MIN_LEGACY_MESSAGE_SIZE) {
            PyErr_Format(PyExc_ValueError, "batch length %d at byte %zd is impossible",
                         (int)batch_length, pos);
            goto fail;
        }
        Py_ssize_t end = pos + LOG_OVERHEAD + batch_length;
        if (end > total) {
            break; /* a truncated final batch: normal at a fetch's byte limit */
        }
        unsigned char magic = batch[MAGIC_OFFSET];
        if (magic < 2) {
            pos = end; /* legacy message sets carry no headers */
            continue;
        }
        if (magic != 2) {
            PyErr_Format(PyExc_ValueError, "unknown magic %d", (int)magic);
            goto fail;
        }
        if (end - pos < RECORDS_OFFSET) {
            PyErr_Format(PyExc_ValueError, "%zd bytes is too short for a v2 batch", end - pos);
            goto fail;
        }
        int16_t attributes = (int16_t)read_be(batch + ATTRIBUTES_OFFSET, 2);
        if (attributes & CONTROL_FLAG) {
            pos = end;
            continue;
        }
        int64_t base_offset = (int64_t)read_be(batch, 8);
        int32_t last_offset_delta = (int32_t)read_be(batch + LAST_OFFSET_DELTA_OFFSET, 4);
        int32_t batch_records = (int32_t)read_be(batch + RECORD_COUNT_OFFSET, 4);
        if ((__int128)base_offset + last_offset_delta > highest) {
            highest = (__int128)base_offset + last_offset_delta;
            highest_base = base_offset;
            highest_delta = last_offset_delta;
        }
        record_count += batch_records;
        if (attributes & CODEC_MASK) {
            PyObject *entry = Py_BuildValue("(nnO)", pos, end, Py_None);
            if (entry == NULL || PyList_Append(wanted, entry) < 0) {
                Py_XDECREF(entry);
                goto fail;
            }
            Py_DECREF(entry);
            if (until_wanted) {
                break;
            }
        }
        else {
            if (sampled_starts(data, pos + RECORDS_OFFSET, end, batch_records, &starts) < 0) {
                goto fail;
            }
            if (starts != NULL) {
                PyObject *entry = Py_BuildValue("(nnN)", pos, end, starts);
                starts = NULL; /* the entry owns it (or it was released with the entry) */
                if (entry == NULL || PyList_Append(wanted, entry) < 0) {
                    Py_XDECREF(entry);
                    goto fail;
                }
                Py_DECREF(entry);
                if (until_wanted) {
                    break;
                }
            }
        }
        pos = end;
    }
    PyObject *highest_obj;
    if (highest >= INT64_MIN && highest <= INT64_MAX) {
        highest_obj = PyLong_FromLongLong((long long)highest);
    }
    else {
        PyObject *base = PyLong_FromLongLong(highest_base);
        PyObject *delta = base ? PyLong_FromLongLong(highest_delta) : NULL;
        highest_obj = delta ? PyNumber_Add(base, delta) : NULL;
        Py_XDECREF(base);
        Py_XDECREF(delta);
    }
    if (highest_obj == NULL) {
        Py_DECREF(wanted);
        return NULL;
    }
    return Py_BuildValue("(NLN)", highest_obj, record_count, wanted);

fail:
    Py_XDECREF(starts);
    Py_XDECREF(wanted);
    return NULL;
}

static PyObject *
skim_batches(PyObject *module, PyObject *args)
{
    Py_buffer view;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*", &view)) {
        return NULL;
    }
    PyObject *result = skim_batches_in(view.buf, view.len, 0);
    PyBuffer_Release(&view);
    return result;
}

/* --- read_record: one record's fields, for RecordView ------------------------------------- */

/* The record's headers (_read_headers in records.py): a tuple of (str key, bytes-or-None value)
 * that must end exactly at `end`, or NULL with ValueError. */
static PyObject *
read_headers(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end, int64_t count)
{
    if (count < 0 || count * 2 > end - pos) {
        PyErr_Format(PyExc_ValueError, "impossible header count %lld", (long long)count);
        return NULL;
    }
    PyObject *headers = PyTuple_New((Py_ssize_t)count);
    if (headers == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        int64_t key_length, value_length;
        if (read_varint(buf, &pos, end, MAX_VARINT_BYTES, &key_length) < 0) {
            goto fail;
        }
        if (key_length < 0 || key_length > end - pos) {
            PyErr_Format(PyExc_ValueError, "bad header key length %lld", (long long)key_length);
            goto fail;
        }
        PyObject *key = PyUnicode_DecodeUTF8((const char *)buf + pos, (Py_ssize_t)key_length,
                                             "strict");
        if (key == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "header key is not utf-8");
            }
            goto fail;
        }
        pos += (Py_ssize_t)key_length;
        if (read_varint(buf, &pos, end, MAX_VARINT_BYTES, &value_length) < 0) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *value;
        if (value_length < 0) {
            value = Py_NewRef(Py_None);
        }
        else if (value_length > end - pos) {
            Py_DECREF(key);
            PyErr_Format(PyExc_ValueError, "bad header value length %lld",
                         (long long)value_length);
            goto fail;
        }
        else {
            value = PyBytes_FromStringAndSize((const char *)buf + pos, (Py_ssize_t)value_length);
            pos += (Py_ssize_t)value_length;
        }
        PyObject *pair = value ? PyTuple_Pack(2, key, value) : NULL;
        Py_DECREF(key);
        Py_XDECREF(value);
        if (pair == NULL) {
            goto fail;
        }
        PyTuple_SET_ITEM(headers, i, pair);
    }
    if (pos != end) {
        PyErr_Format(PyExc_ValueError, "record has %zd bytes after its headers", end - pos);
        goto fail;
    }
    return headers;

fail:
    Py_DECREF(headers);
    return NULL;
}

PyDoc_STRVAR(read_record_doc,
"read_record(buf, pos, limit, base_offset, base_timestamp, log_append_time) -> tuple | None\n\n"
"The fields of the record at buf[pos:limit] as records.RecordView holds them; None where a\n"
"value needs more than 64 bits (the Python twin reads those).");

static PyObject *
read_record(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, limit;
    long long base_offset, base_timestamp;
    PyObject *log_append_time;
    if (!PyArg_ParseTuple(args, "y*nnLLO", &view, &pos, &limit, &base_offset, &base_timestamp,
                          &log_append_time)) {
        return NULL;
    }
    const unsigned char *buf = view.buf;
    PyObject *result = NULL;
    int status = 0;
    if (pos < 0 || limit > view.len || pos > limit) {
        PyErr_SetString(PyExc_ValueError, "record position outside the buffer");
        goto done;
    }
    long long append_time = 0;
    int has_append_time = log_append_time != Py_None;
    if (has_append_time) {
        append_time = PyLong_AsLongLong(log_append_time);
        if (append_time == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    Py_ssize_t length_start = pos;
    int64_t length, timestamp_delta, offset_delta, key_length, value_length, header_count;
    if ((status = read_varint(buf, &pos, limit, MAX_VARINT_BYTES, &length)) < 0) {
        goto done;
    }
    if (length <= 0 || length > limit - pos) {
        PyErr_Format(PyExc_ValueError, "record length %lld does not fit the batch",
                     (long long)length);
        goto done;
    }
    Py_ssize_t start = pos, end = pos + (Py_ssize_t)length;
    pos += 1; /* attributes: unused by any Kafka version */
    if ((status = read_varint(buf, &pos, end, MAX_VARLONG_BYTES, &timestamp_delta)) < 0
        || (status = read_varint(buf, &pos, end, MAX_VARINT_BYTES, &offset_delta)) < 0) {
        goto done;
    }
    long long offset, timestamp = append_time;
    if (__builtin_add_overflow(base_offset, offset_delta, &offset)
        || (!has_append_time
            && __builtin_add_overflow(base_timestamp, timestamp_delta, &timestamp))) {
        status = -2; /* beyond 64 bits: the Python twin's integers hold it */
        goto done;
    }
    if ((status = read_varint(buf, &pos, end, MAX_VARINT_BYTES, &key_length)) < 0) {
        goto done;
    }
    Py_ssize_t key_start = pos;
    if (key_length > 0) {
        if (key_length > end - pos) {
            PyErr_SetString(PyExc_ValueError, "record key runs past the record");
            goto done;
        }
        pos += (Py_ssize_t)key_length;
    }
    if ((status = read_varint(buf, &pos, end, MAX_VARINT_BYTES, &value_length)) < 0) {
        goto done;
    }
    Py_ssize_t value_start = pos;
    if (value_length > 0) {
        if (value_length > end - pos) {
            PyErr_SetString(PyExc_ValueError, "record value runs past the record");
            goto done;
        }
        pos += (Py_ssize_t)value_length;
    }
    Py_ssize_t header_count_start = pos;
    if ((status = read_varint(buf, &pos, end, MAX_VARINT_BYTES, &header_count)) < 0) {
        goto done;
    }
    PyObject *headers;
    if (header_count == 0) {
        if (pos != end) {
            PyErr_Format(PyExc_ValueError, "record has %zd bytes after its headers", end - pos);
            goto done;
        }
        headers = PyTuple_New(0);
    }
    else {
        headers = read_headers(buf, pos, end, header_count);
    }
    if (headers == NULL) {
        goto done;
    }
    result = Py_BuildValue("(nnnLLnLnLnnLN)", length_start, start, end, offset, timestamp,
                           key_start, (long long)key_length, value_start,
                           (long long)value_length, header_count_start, pos,
                           (long long)header_count, headers);

done:
    PyBuffer_Release(&view);
    if (status == -2) {
        Py_RETURN_NONE;
    }
    return result;
}

static const char HEX[] = "0123456789abcdef";

static void
write_hex(char *out, const unsigned char *bytes, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        out[2 * i] = HEX[bytes[i] >> 4];
        out[2 * i + 1] = HEX[bytes[i] & 0x0F];
    }
}

static int
all_zero(const unsigned char *bytes, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (bytes[i]) {
            return 0;
        }
    }
    return 1;
}

/* A big-endian unsigned integer of n <= 16 bytes as a Python int. */
static PyObject *
int_from_big_endian(const unsigned char *bytes, Py_ssize_t n)
{
    unsigned long long high = 0, low = 0;
    Py_ssize_t split = n > 8 ? n - 8 : 0;
    for (Py_ssize_t i = 0; i < split; i++) {
        high = (high << 8) | bytes[i];
    }
    for (Py_ssize_t i = split; i < n; i++) {
        low = (low << 8) | bytes[i];
    }
    if (split == 0) {
        return PyLong_FromUnsignedLongLong(low);
    }
    PyObject *result = NULL;
    PyObject *high_int = PyLong_FromUnsignedLongLong(high);
    PyObject *low_int = PyLong_FromUnsignedLongLong(low);
    PyObject *shift = PyLong_FromLong(64);
    if (high_int != NULL && low_int != NULL && shift != NULL) {
        PyObject *shifted = PyNumber_Lshift(high_int, shift);
        if (shifted != NULL) {
            result = PyNumber_Or(shifted, low_int);
            Py_DECREF(shifted);
        }
    }
    Py_XDECREF(high_int);
    Py_XDECREF(low_int);
    Py_XDECREF(shift);
    return result;
}

/* Whether any id in `count` contexts' random bytes is all zeros (invalid: drawn again). */
static int
any_zero_id(const unsigned char *random, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *ids = random + i * RANDOM_PER_ROOT;
        if (all_zero(ids, 16) || all_zero(ids + 16, 8)) {
            return 1;
        }
    }
    return 0;
}

/* One root traceparent header in wire form (ROOT_HEADER_SIZE bytes) from RANDOM_PER_ROOT
 * random bytes; whether it is sampled (the low 16 hex digits of the trace id below
 * `threshold`, or no threshold). */
static int
format_root(char *out, const unsigned char *ids, const unsigned char *threshold)
{
    memcpy(out, WIRE_PREFIX, WIRE_PREFIX_SIZE);
    char *trace_hex = out + WIRE_PREFIX_SIZE + 3;
    memcpy(out + WIRE_PREFIX_SIZE, "00-", 3);
    write_hex(trace_hex, ids, 16);
    trace_hex[32] = '-';
    write_hex(trace_hex + 33, ids + 16, 8);
    int is_sampled = threshold == NULL || memcmp(trace_hex + 16, threshold, 16) < 0;
    memcpy(trace_hex + 49, is_sampled ? "-01" : "-00", 3);
    return is_sampled;
}

/* Appends (index, trace id, span id) to `sampled`; 0, or -1 with an exception set. */
static int
append_sampled(PyObject *sampled, Py_ssize_t i, const unsigned char *ids)
{
    PyObject *index = PyLong_FromSsize_t(i);
    PyObject *trace_id = index ? int_from_big_endian(ids, 16) : NULL;
    PyObject *span_id = trace_id ? int_from_big_endian(ids + 16, 8) : NULL;
    PyObject *entry = span_id ? PyTuple_Pack(3, index, trace_id, span_id) : NULL;
    Py_XDECREF(index);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    int result = entry == NULL ? -1 : PyList_Append(sampled, entry);
    Py_XDECREF(entry);
    return result;
}

int
roots_threshold(PyObject *threshold_arg, const unsigned char **threshold)
{
    *threshold = NULL;
    if (threshold_arg == Py_None) {
        return 0;
    }
    if (!PyBytes_Check(threshold_arg) || PyBytes_GET_SIZE(threshold_arg) != 16) {
        PyErr_SetString(PyExc_TypeError, "threshold must be 16 hex digits (bytes) or None");
        return -1;
    }
    *threshold = (const unsigned char *)PyBytes_AS_STRING(threshold_arg);
    return 0;
}

PyDoc_STRVAR(root_traceparents_doc,
"root_traceparents(random, threshold) -> tuple[list[bytes], list[tuple[int, int, int]]] | None\n\n"
"One root traceparent header (wire form) per 24 random bytes, and (index, trace id, span id)\n"
"of the sampled ones; None when an id would be all zeros (the caller draws again).");

static PyObject *
root_traceparents(PyObject *module, PyObject *args)
{
    Py_buffer random_view;
    PyObject *threshold_arg;
    const unsigned char *threshold;
    if (!PyArg_ParseTuple(args, "y*O", &random_view, &threshold_arg)) {
        return NULL;
    }
    if (roots_threshold(threshold_arg, &threshold) < 0) {
        PyBuffer_Release(&random_view);
        return NULL;
    }
    if (random_view.len % RANDOM_PER_ROOT) {
        PyBuffer_Release(&random_view);
        PyErr_SetString(PyExc_ValueError, "random must hold 24 bytes per context");
        return NULL;
    }
    const unsigned char *random = random_view.buf;
    Py_ssize_t count = random_view.len / RANDOM_PER_ROOT;
    if (any_zero_id(random, count)) {
        PyBuffer_Release(&random_view);
        Py_RETURN_NONE;
    }
    PyObject *headers = PyList_New(count);
    PyObject *sampled = PyList_New(0);
    for (Py_ssize_t i = 0; headers != NULL && sampled != NULL && i < count; i++) {
        const unsigned char *ids = random + i * RANDOM_PER_ROOT;
        PyObject *header = PyBytes_FromStringAndSize(NULL, ROOT_HEADER_SIZE);
        if (header == NULL) {
            Py_CLEAR(headers);
            break;
        }
        PyList_SET_ITEM(headers, i, header);
        if (format_root(PyBytes_AS_STRING(header), ids, threshold) &&
            append_sampled(sampled, i, ids) < 0) {
            Py_CLEAR(sampled);
        }
    }
    PyBuffer_Release(&random_view);
    if (headers == NULL || sampled == NULL) {
        Py_XDECREF(headers);
        Py_XDECREF(sampled);
        return NULL;
    }
    return Py_BuildValue("(NN)", headers, sampled);
}

/* crc(bytes) over memory that outlives the call, without copying it. */
static PyObject *
call_crc(PyObject *crc, const unsigned char *data, Py_ssize_t size)
{
    PyObject *view = PyMemoryView_FromMemory((char *)data, size, PyBUF_READ);
    if (view == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(crc, view);
    Py_DECREF(view);
    return value;
}

PyDoc_STRVAR(inject_roots_doc,
"inject_roots(records, draw, threshold, crc, max_batch_bytes)\n"
"    -> tuple[bytes, int, list[tuple[int, int, int, int]]] | None\n\n"
"The twin of proxy/tracing/roots.py's inject_roots_python: a partition's records that are one\n"
"whole uncompressed batch of records without headers, with a new root traceparent added to\n"
"each record and the batch re-signed; the record count; (index, trace id, span id, start of\n"
"the record in the original records section, its offset, its key) of the sampled ones. None:\n"
"not that case.");

/* The offset (base_offset + its offset delta) and key (bytes or None) of the record that begins
 * at `start` of a records section the splice has read whole: 0 with new references, or -1 with
 * an error (ValueError for a record that does not read, which the splice rules out). */
static int
offset_and_key(const unsigned char *body, Py_ssize_t limit, Py_ssize_t start, int64_t base_offset,
               PyObject **offset, PyObject **key)
{
    Py_ssize_t pos = start;
    int64_t length, offset_delta, key_size;
    if (start < 0 || read_varint(body, &pos, limit, MAX_VARINT_BYTES, &length) != 0) {
        goto unreadable;
    }
    Py_ssize_t end = length > 0 && length <= limit - pos ? pos + (Py_ssize_t)length : -1;
    pos += 1; /* attributes */
    for (int i = 0; end >= 0 && i < MAX_VARLONG_BYTES && pos < end; i++) {
        if (!(body[pos++] & 0x80)) { /* the timestamp delta, stepped over (any value) */
            break;
        }
    }
    if (end < 0 || read_varint(body, &pos, end, MAX_VARINT_BYTES, &offset_delta) != 0 ||
        read_varint(body, &pos, end, MAX_VARINT_BYTES, &key_size) != 0 || key_size > end - pos) {
        goto unreadable;
    }
    PyObject *base = PyLong_FromLongLong(base_offset);
    PyObject *delta = base ? PyLong_FromLongLong(offset_delta) : NULL;
    *offset = delta ? PyNumber_Add(base, delta) : NULL;
    Py_XDECREF(base);
    Py_XDECREF(delta);
    if (*offset == NULL) {
        return -1;
    }
    *key = key_size < 0 ? Py_NewRef(Py_None)
                        : PyBytes_FromStringAndSize((const char *)body + pos, (Py_ssize_t)key_size);
    if (*key == NULL) {
        Py_CLEAR(*offset);
        return -1;
    }
    return 0;
unreadable:
    if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "a sampled record does not read");
    }
    return -1;
}

PyObject *
inject_roots_batch(const unsigned char *batch, Py_ssize_t size, PyObject *draw,
                   const unsigned char *threshold, PyObject *crc, Py_ssize_t max_batch_bytes)
{
    PyObject *result = NULL, *drawn = NULL, *sampled = NULL, *wanted = NULL, *starts = NULL;
    PyObject *rebuilt = NULL, *checked = NULL;
    char *roots = NULL;
    const char **added = NULL;
    Py_ssize_t *sizes = NULL;
    /* One whole v2 batch, uncompressed, not a control batch; else the general path. */
    if (size < RECORDS_OFFSET || (Py_ssize_t)read_be(batch + 8, 4) + LOG_OVERHEAD != size ||
        batch[MAGIC_OFFSET] != 2 || (batch[ATTRIBUTES_OFFSET + 1] & CODEC_MASK) ||
        (batch[ATTRIBUTES_OFFSET + 1] & CONTROL_FLAG)) {
        goto not_applicable;
    }
    Py_ssize_t count = (int32_t)read_be(batch + RECORD_COUNT_OFFSET, 4);
    Py_ssize_t limit = size - RECORDS_OFFSET;
    if (count <= 0 || count > limit / MIN_RECORD_SIZE ||
        size + count * ROOT_HEADER_SIZE > max_batch_bytes) {
        goto not_applicable;
    }
    if (first_record_has_headers(batch + RECORDS_OFFSET, limit)) {
        goto not_applicable; /* an instrumented producer's batch: before any work */
    }
    /* A batch whose CRC is already wrong is the general path's to refuse. */
    checked = call_crc(crc, batch + ATTRIBUTES_OFFSET, size - ATTRIBUTES_OFFSET);
    if (checked == NULL) {
        goto done;
    }
    if (PyLong_AsUnsignedLong(checked) != read_be(batch + CRC_OFFSET, 4)) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto not_applicable;
    }
    drawn = PyObject_CallFunction(draw, "n", count * RANDOM_PER_ROOT);
    if (drawn == NULL) {
        goto done;
    }
    if (!PyBytes_Check(drawn) || PyBytes_GET_SIZE(drawn) != count * RANDOM_PER_ROOT) {
        PyErr_SetString(PyExc_TypeError, "draw must return as many bytes as asked");
        goto done;
    }
    const unsigned char *random = (const unsigned char *)PyBytes_AS_STRING(drawn);
    if (any_zero_id(random, count)) {
        goto not_applicable; /* the general path draws again */
    }
    /* Every record's header written once, into one buffer the splice reads from. */
    roots = PyMem_Malloc((size_t)(count * ROOT_HEADER_SIZE));
    added = PyMem_Malloc(sizeof(char *) * (size_t)count);
    sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)count);
    sampled = PyList_New(0);
    wanted = PyList_New(0);
    starts = PyList_New(0);
    if (roots == NULL || added == NULL || sizes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (sampled == NULL || wanted == NULL || starts == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *ids = random + i * RANDOM_PER_ROOT;
        added[i] = roots + i * ROOT_HEADER_SIZE;
        sizes[i] = ROOT_HEADER_SIZE;
        if (format_root(roots + i * ROOT_HEADER_SIZE, ids, threshold)) {
            PyObject *index = PyLong_FromSsize_t(i);
            int failed = index == NULL || PyList_Append(wanted, index) < 0 ||
                         append_sampled(sampled, i, ids) < 0;
            Py_XDECREF(index);
            if (failed) {
                goto done;
            }
        }
    }
    Py_ssize_t sampled_count = PyList_GET_SIZE(sampled);
    /* The new batch: the spliced records after room for the batch header, one copy. */
    rebuilt = splice(batch + RECORDS_OFFSET, limit, count, added, sizes, wanted, starts,
                     RECORDS_OFFSET);
    if (rebuilt == NULL) {
        goto done;
    }
    if (rebuilt == Py_None) {
        goto not_applicable; /* a record has headers: the general path */
    }
    Py_ssize_t new_size = PyBytes_GET_SIZE(rebuilt);
    if (new_size > max_batch_bytes || new_size - LOG_OVERHEAD > INT32_MAX) {
        goto not_applicable;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(rebuilt);
    memcpy(out, batch, RECORDS_OFFSET);
    uint32_t length = (uint32_t)(new_size - LOG_OVERHEAD);
    out[8] = (unsigned char)(length >> 24);
    out[9] = (unsigned char)(length >> 16);
    out[10] = (unsigned char)(length >> 8);
    out[11] = (unsigned char)length;
    PyObject *signed_crc = call_crc(crc, out + ATTRIBUTES_OFFSET, new_size - ATTRIBUTES_OFFSET);
    unsigned long crc_value = signed_crc != NULL ? PyLong_AsUnsignedLong(signed_crc) : 0;
    Py_XDECREF(signed_crc);
    if (signed_crc == NULL || PyErr_Occurred()) {
        goto done;
    }
    out[CRC_OFFSET] = (unsigned char)(crc_value >> 24);
    out[CRC_OFFSET + 1] = (unsigned char)(crc_value >> 16);
    out[CRC_OFFSET + 2] = (unsigned char)(crc_value >> 8);
    out[CRC_OFFSET + 3] = (unsigned char)crc_value;
    /* (index, trace id, span id, record start, offset, key) of the sampled records. */
    int64_t base_offset = (int64_t)read_be(batch, 8);
    for (Py_ssize_t i = 0; i < sampled_count; i++) {
        PyObject *entry = PyList_GET_ITEM(sampled, i);
        PyObject *start = PyList_GET_ITEM(starts, i);
        PyObject *offset = NULL, *key = NULL;
        if (offset_and_key(batch + RECORDS_OFFSET, limit, PyLong_AsSsize_t(start), base_offset,
                           &offset, &key) < 0) {
            goto done;
        }
        PyObject *full = Py_BuildValue("(OOOONN)", PyTuple_GET_ITEM(entry, 0),
                                       PyTuple_GET_ITEM(entry, 1), PyTuple_GET_ITEM(entry, 2),
                                       start, offset, key);
        if (full == NULL) {
            goto done;
        }
        PyList_SetItem(sampled, i, full); /* steals full, releases entry */
    }
    result = Py_BuildValue("(OnO)", rebuilt, count, sampled);
    goto done;

not_applicable:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(checked);
    Py_XDECREF(drawn);
    Py_XDECREF(sampled);
    Py_XDECREF(wanted);
    Py_XDECREF(starts);
    Py_XDECREF(rebuilt);
    PyMem_Free(roots);
    PyMem_Free(added);
    PyMem_Free(sizes);
    return result;
}

static PyObject *
inject_roots(PyObject *module, PyObject *args)
{
    Py_buffer view;
    PyObject *draw, *threshold_arg, *crc;
    Py_ssize_t max_batch_bytes;
    const unsigned char *threshold;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*OOOn", &view, &draw, &threshold_arg, &crc,
                          &max_batch_bytes)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (roots_threshold(threshold_arg, &threshold) == 0) {
        result = inject_roots_batch(view.buf, view.len, draw, threshold, crc, max_batch_bytes);
    }
    PyBuffer_Release(&view);
    return result;
}


static PyMethodDef speedups_methods[] = {
    {"sampled_traceparent_positions", sampled_traceparent_positions, METH_VARARGS,
     sampled_traceparent_positions_doc},
    {"splice_one_header_each", splice_one_header_each, METH_VARARGS, splice_one_header_each_doc},
    {"root_traceparents", root_traceparents, METH_VARARGS, root_traceparents_doc},
    {"inject_roots", inject_roots, METH_VARARGS, inject_roots_doc},
    {"inject_request_roots", (PyCFunction)(void (*)(void))inject_request_roots, METH_FASTCALL,
     inject_request_roots_doc},
    {"skim_fetch_response", (PyCFunction)(void (*)(void))skim_fetch_response, METH_FASTCALL,
     skim_fetch_response_doc},
    {"skim_fetch_frame", (PyCFunction)(void (*)(void))skim_fetch_frame, METH_FASTCALL,
     skim_fetch_frame_doc},
    {"receive_spans", (PyCFunction)(void (*)(void))receive_spans, METH_FASTCALL,
     receive_spans_doc},
    {"skim_batches", skim_batches, METH_VARARGS, skim_batches_doc},
    {"sampled_record_starts", sampled_record_starts, METH_VARARGS, sampled_record_starts_doc},
    {"read_record", read_record, METH_VARARGS, read_record_doc},
    {"walk_schema", walk_schema, METH_VARARGS, walk_schema_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "proxy.codec._speedups",
    "Compiled twins of the hot loops of the codec, the fetch skim and the schema walk.",
    -1,
    speedups_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module = PyModule_Create(&speedups_module);
    if (module != NULL && pairing_add_type(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
