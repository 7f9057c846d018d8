/* The consumer's receive spans written in OTLP wire form from a partition's fetched records, part
 * of _speedups. The twin, which documents the logic, is receive_spans_python in
 * proxy/tracing/receive.py.
 *
 * A record is read once, by its length prefixes: for one holding a sampled traceparent header
 * (the skim's test), its first traceparent value is parsed as parse_traceparent does, and a
 * sampled context gets a span, written between the parts of the partition's SpanTemplate. No
 * Python object is made per record; a compressed batch is read from what the caller's decompress
 * gives. Anything but the usual case (records that do not read exactly, a header key that is not
 * ASCII in such a record, numbers beyond 64 bits, a body that does not decompress) is declined
 * with None, for the general path; only the arguments' errors raise.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_receive_spans.h"
#include "_record_fields.h"

#define LOG_OVERHEAD 12
#define MAGIC_OFFSET 16
#define ATTRIBUTES_OFFSET 21
#define LAST_OFFSET_DELTA_OFFSET 23
#define BASE_TIMESTAMP_OFFSET 27
#define MAX_TIMESTAMP_OFFSET 35
#define RECORD_COUNT_OFFSET 57
#define RECORDS_OFFSET 61
#define MIN_LEGACY_MESSAGE_SIZE 14
#define CODEC_MASK 0x07
#define TIMESTAMP_TYPE_FLAG 0x08
#define CONTROL_FLAG 0x20
#define MAX_VARINT_BYTES 5
#define MAX_VARLONG_BYTES 10
#define MAX_TRACEPARENT 512
#define KEY_LIMIT 64
#define TEMPLATE_PARTS 7

enum { HEAD, COMMON, OFFSET_KEY, AGE_KEY, MESSAGE_KEY_KEY, REDELIVERED, TAIL };

/* What a sampled record's span needs, kept between the read and the write. */
typedef struct {
    uint64_t trace_high, trace_low, parent;
    int64_t offset, age;
    const unsigned char *key; /* the key's bytes when shown (in the records or in key_text) */
    Py_ssize_t key_size;      /* -1: not shown */
    PyObject *key_text;       /* the UTF-8 of a non-ASCII key key_text showed, or NULL */
    Py_ssize_t body_size;     /* of its Span message, once sized for the write */
} Sampled;

typedef struct {
    Sampled *items;
    Py_ssize_t count, room;
} SampledList;

static int
append_sampled(SampledList *list, const Sampled *item)
{
    if (list->count == list->room) {
        Py_ssize_t room = list->room ? 2 * list->room : 16;
        Sampled *items = PyMem_Realloc(list->items, sizeof(Sampled) * (size_t)room);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        list->items = items;
        list->room = room;
    }
    list->items[list->count++] = *item;
    return 0;
}

/* A zig-zag varint within 64 bits (record_varint): 0, or -1 when it is not one. */
static int
varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t limit, int max_bytes, int64_t *value)
{
    return record_varint(buf, pos, limit, max_bytes, 1, value);
}

static int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* n lower-case hex digits as a number (n <= 16), or -1 in *ok for any other character. */
static uint64_t
hex_value(const unsigned char *p, int n, int *ok)
{
    uint64_t value = 0;
    for (int i = 0; i < n; i++) {
        int digit = hex_digit(p[i]);
        if (digit < 0) {
            *ok = 0;
            return 0;
        }
        value = (value << 4) | (uint64_t)digit;
    }
    return value;
}

static int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0B || c == 0x0C;
}

/* parse_traceparent (traceparent.py): 1 with the ids and flag of a valid value, else 0. */
static int
parse_traceparent(const unsigned char *value, int64_t size, Sampled *out, int *sampled)
{
    if (size < 0 || size > MAX_TRACEPARENT) {
        return 0;
    }
    const unsigned char *start = value, *end = value + size;
    while (start < end && is_space(*start)) {
        start++;
    }
    while (end > start && is_space(end[-1])) {
        end--;
    }
    if (end - start < TRACEPARENT_VALUE_LENGTH || start[2] != '-' || start[35] != '-' ||
        start[52] != '-') {
        return 0;
    }
    int ok = 1;
    uint64_t version = hex_value(start, 2, &ok);
    out->trace_high = hex_value(start + 3, 16, &ok);
    out->trace_low = hex_value(start + 19, 16, &ok);
    out->parent = hex_value(start + 36, 16, &ok);
    uint64_t flags = hex_value(start + 53, 2, &ok);
    if (!ok || version == 0xFF || (version == 0 && end - start != TRACEPARENT_VALUE_LENGTH)) {
        return 0;
    }
    if ((out->trace_high == 0 && out->trace_low == 0) || out->parent == 0) {
        return 0;
    }
    *sampled = (int)(flags & 1);
    return 1;
}

/* The figures of one partition's read. */
typedef struct {
    __int128 highest;
    long long record_count, with_context, without_context;
    int64_t now_ms;
    PyObject *key_text, *decompress;
    PyObject *bodies; /* decompressed batch bodies, kept while keys point into them */
} Reading;

/* Whether the key is shown, as spans.printable_key decides: sets item->key and key_size.
 * 0, -1 with an error (key_text's), 1 to decline (key_text gave what is not text). */
static int
show_key(const unsigned char *key, int64_t key_size, Reading *reading, Sampled *item)
{
    item->key_size = -1;
    item->key_text = NULL;
    if (key_size < 0 || key_size > KEY_LIMIT) {
        return 0;
    }
    int ascii = 1, printable = 1;
    for (int64_t i = 0; i < key_size; i++) {
        if (key[i] & 0x80) {
            ascii = 0;
            break;
        }
        if (key[i] < 0x20 || key[i] == 0x7F) {
            printable = 0;
        }
    }
    if (ascii) {
        if (printable) {
            item->key = key;
            item->key_size = (Py_ssize_t)key_size;
        }
        return 0;
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)key_size);
    PyObject *text = raw ? PyObject_CallOneArg(reading->key_text, raw) : NULL;
    Py_XDECREF(raw);
    if (text == NULL) {
        return -1;
    }
    if (text == Py_None) {
        Py_DECREF(text);
        return 0;
    }
    PyObject *encoded = PyUnicode_Check(text) ? PyUnicode_AsUTF8String(text) : NULL;
    Py_DECREF(text);
    if (encoded == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        PyErr_SetString(PyExc_TypeError, "key_text must return str or None");
        return -1;
    }
    item->key_text = encoded;
    item->key = (const unsigned char *)PyBytes_AS_STRING(encoded);
    item->key_size = PyBytes_GET_SIZE(encoded);
    return 0;
}

/* One record at *pos, read to its end (*pos after it); a sampled context's span noted in list.
 * 0, 1 to decline, -1 with an error. */
static int
read_record(const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end, int64_t base_offset,
            int64_t base_timestamp, const int64_t *log_append_time, Reading *reading,
            SampledList *list)
{
    Py_ssize_t at = *pos;
    int64_t length, timestamp_delta, offset_delta, key_size, value_size, header_count;
    if (varint(data, &at, end, MAX_VARINT_BYTES, &length) < 0 || length <= 0 ||
        length > end - at) {
        return 1;
    }
    Py_ssize_t record_end = at + (Py_ssize_t)length;
    at += 1; /* attributes */
    if (varint(data, &at, record_end, MAX_VARLONG_BYTES, &timestamp_delta) < 0 ||
        varint(data, &at, record_end, MAX_VARINT_BYTES, &offset_delta) < 0 ||
        varint(data, &at, record_end, MAX_VARINT_BYTES, &key_size) < 0) {
        return 1;
    }
    const unsigned char *key = data + at;
    if (step_over(&at, record_end, key_size, -1) < 0 ||
        varint(data, &at, record_end, MAX_VARINT_BYTES, &value_size) < 0 ||
        step_over(&at, record_end, value_size, -1) < 0 ||
        varint(data, &at, record_end, MAX_VARINT_BYTES, &header_count) < 0 || header_count < 0) {
        return 1;
    }
    int holds_sampled = 0, ascii_keys = 1;
    const unsigned char *first = NULL;
    int64_t first_size = -1;
    for (int64_t h = 0; h < header_count; h++) {
        int64_t name_size;
        if (varint(data, &at, record_end, MAX_VARINT_BYTES, &name_size) < 0) {
            return 1;
        }
        const unsigned char *name = data + at;
        if (step_over(&at, record_end, name_size, 0) < 0 ||
            varint(data, &at, record_end, MAX_VARINT_BYTES, &value_size) < 0) {
            return 1;
        }
        const unsigned char *value = data + at;
        if (step_over(&at, record_end, value_size, -1) < 0) {
            return 1;
        }
        int lower_match = name_size == TRACEPARENT_KEY_SIZE;
        for (int64_t i = 0; i < name_size; i++) {
            unsigned char c = name[i];
            if (c & 0x80) {
                ascii_keys = 0;
            }
            if (lower_match && i < TRACEPARENT_KEY_SIZE) {
                unsigned char lower = c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
                lower_match = lower == (unsigned char)TRACEPARENT_KEY[i];
            }
        }
        if (first == NULL && lower_match) {
            first = value;
            first_size = value_size;
        }
        holds_sampled |= is_sampled_traceparent(name, name_size, value, value_size);
    }
    if (at != record_end) {
        return 1;
    }
    *pos = record_end;
    if (!holds_sampled) {
        return 0;
    }
    if (!ascii_keys) {
        return 1;
    }
    __int128 offset = (__int128)base_offset + offset_delta;
    if (offset < INT64_MIN || offset > INT64_MAX) {
        return 1;
    }
    if (offset > reading->highest) {
        reading->highest = offset;
    }
    Sampled item;
    int sampled;
    if (!parse_traceparent(first, first_size, &item, &sampled)) {
        reading->without_context++;
        return 0;
    }
    reading->with_context++;
    if (!sampled) {
        return 0;
    }
    __int128 timestamp =
        log_append_time ? (__int128)*log_append_time : (__int128)base_timestamp + timestamp_delta;
    __int128 age = (__int128)reading->now_ms - timestamp;
    if (age < 0) {
        age = 0;
    }
    if (age > INT64_MAX) {
        return 1;
    }
    item.offset = (int64_t)offset;
    item.age = (int64_t)age;
    int shown = show_key(key, key_size, reading, &item);
    if (shown != 0) {
        return shown;
    }
    if (append_sampled(list, &item) < 0) {
        Py_XDECREF(item.key_text);
        return -1;
    }
    return 0;
}

/* A compressed batch's records section, as reading->decompress(codec, section) gives it: 0 with
 * *body and *size, kept alive in reading->bodies; 1 to decline (it raised an Exception, or gave
 * what is not bytes); -1 with an error that is no Exception. */
static int
decompressed(Reading *reading, int codec, const unsigned char *payload, Py_ssize_t payload_size,
             const unsigned char **body, Py_ssize_t *size)
{
    PyObject *view = PyMemoryView_FromMemory((char *)payload, payload_size, PyBUF_READ);
    PyObject *result = view ? PyObject_CallFunction(reading->decompress, "iO", codec, view) : NULL;
    Py_XDECREF(view);
    if (result == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();
            return 1;
        }
        return -1;
    }
    if (!PyBytes_CheckExact(result)) {
        Py_DECREF(result);
        return 1;
    }
    int kept = PyList_Append(reading->bodies, result);
    Py_DECREF(result); /* the list holds it */
    if (kept < 0) {
        return -1;
    }
    *body = (const unsigned char *)PyBytes_AS_STRING(result);
    *size = PyBytes_GET_SIZE(result);
    return 0;
}

/* Every batch of the records: 0, 1 to decline, -1 with an error. */
static int
read_batches(const unsigned char *data, Py_ssize_t total, Reading *reading, SampledList *list)
{
    Py_ssize_t pos = 0;
    while (total - pos >= LOG_OVERHEAD) {
        const unsigned char *batch = data + pos;
        int32_t batch_length = (int32_t)read_be(batch + 8, 4);
        if (batch_length < MIN_LEGACY_MESSAGE_SIZE) {
            return 1;
        }
        Py_ssize_t end = pos + LOG_OVERHEAD + batch_length;
        if (end > total) {
            break; /* a truncated final batch: normal at a fetch's byte limit */
        }
        unsigned char magic = batch[MAGIC_OFFSET];
        if (magic < 2) {
            pos = end;
            continue;
        }
        if (magic != 2 || end - pos < RECORDS_OFFSET) {
            return 1;
        }
        int16_t attributes = (int16_t)read_be(batch + ATTRIBUTES_OFFSET, 2);
        if (attributes & CONTROL_FLAG) {
            pos = end;
            continue;
        }
        int64_t base_offset = (int64_t)read_be(batch, 8);
        int32_t last_delta = (int32_t)read_be(batch + LAST_OFFSET_DELTA_OFFSET, 4);
        int64_t base_timestamp = (int64_t)read_be(batch + BASE_TIMESTAMP_OFFSET, 8);
        int64_t max_timestamp = (int64_t)read_be(batch + MAX_TIMESTAMP_OFFSET, 8);
        int32_t count = (int32_t)read_be(batch + RECORD_COUNT_OFFSET, 4);
        if ((__int128)base_offset + last_delta > reading->highest) {
            reading->highest = (__int128)base_offset + last_delta;
        }
        reading->record_count += count;
        if (count < 0) {
            return 1;
        }
        const int64_t *log_append_time = attributes & TIMESTAMP_TYPE_FLAG ? &max_timestamp : NULL;
        const unsigned char *body = data;
        Py_ssize_t at = pos + RECORDS_OFFSET, stop = end;
        if (attributes & CODEC_MASK) {
            int got = decompressed(reading, attributes & CODEC_MASK, data + at, end - at, &body,
                                   &stop);
            if (got != 0) {
                return got;
            }
            at = 0;
        }
        for (int32_t i = 0; i < count; i++) {
            int read = read_record(body, &at, stop, base_offset, base_timestamp, log_append_time,
                                   reading, list);
            if (read != 0) {
                return read;
            }
        }
        if (at != stop) {
            return 1;
        }
        pos = end;
    }
    return 0;
}

static Py_ssize_t
uvarint_size(uint64_t value)
{
    Py_ssize_t n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

static unsigned char *
put_uvarint(unsigned char *out, uint64_t value)
{
    while (value >= 0x80) {
        *out++ = (unsigned char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *out++ = (unsigned char)value;
    return out;
}

static unsigned char *
put_read_be(unsigned char *out, uint64_t value)
{
    for (int shift = 56; shift >= 0; shift -= 8) {
        *out++ = (unsigned char)(value >> shift);
    }
    return out;
}

static unsigned char *
put_little_endian(unsigned char *out, uint64_t value)
{
    for (int shift = 0; shift < 64; shift += 8) {
        *out++ = (unsigned char)(value >> shift);
    }
    return out;
}

static unsigned char *
put_bytes(unsigned char *out, PyObject *bytes)
{
    Py_ssize_t size = PyBytes_GET_SIZE(bytes);
    memcpy(out, PyBytes_AS_STRING(bytes), (size_t)size);
    return out + size;
}

/* A Span.attributes (9) field's size: KeyValue(key, AnyValue with a varint or string value). */
static Py_ssize_t
attribute_size(Py_ssize_t key_field, Py_ssize_t any_value)
{
    Py_ssize_t body = key_field + 1 + uvarint_size((uint64_t)any_value) + any_value;
    return 1 + uvarint_size((uint64_t)body) + body;
}

static unsigned char *
put_int_attribute(unsigned char *out, PyObject *key_field, int64_t value)
{
    Py_ssize_t any_value = 1 + uvarint_size((uint64_t)value);
    Py_ssize_t key = PyBytes_GET_SIZE(key_field);
    *out++ = 0x4A;
    out = put_uvarint(out, (uint64_t)(key + 1 + uvarint_size((uint64_t)any_value) + any_value));
    out = put_bytes(out, key_field);
    *out++ = 0x12;
    out = put_uvarint(out, (uint64_t)any_value);
    *out++ = 0x18;
    return put_uvarint(out, (uint64_t)value);
}

static unsigned char *
put_str_attribute(unsigned char *out, PyObject *key_field, const unsigned char *text,
                  Py_ssize_t size)
{
    Py_ssize_t any_value = 1 + uvarint_size((uint64_t)size) + size;
    Py_ssize_t key = PyBytes_GET_SIZE(key_field);
    *out++ = 0x4A;
    out = put_uvarint(out, (uint64_t)(key + 1 + uvarint_size((uint64_t)any_value) + any_value));
    out = put_bytes(out, key_field);
    *out++ = 0x12;
    out = put_uvarint(out, (uint64_t)any_value);
    *out++ = 0x0A;
    out = put_uvarint(out, (uint64_t)size);
    memcpy(out, text, (size_t)size);
    return out + size;
}

static Py_ssize_t
span_body_size(const Sampled *item, PyObject *const *parts, int64_t high)
{
    Py_ssize_t size = 28 + 10 + PyBytes_GET_SIZE(parts[HEAD]) + 18 +
                      PyBytes_GET_SIZE(parts[COMMON]) + PyBytes_GET_SIZE(parts[TAIL]);
    size += attribute_size(PyBytes_GET_SIZE(parts[OFFSET_KEY]),
                           1 + uvarint_size((uint64_t)item->offset));
    size += attribute_size(PyBytes_GET_SIZE(parts[AGE_KEY]), 1 + uvarint_size((uint64_t)item->age));
    if (item->offset <= high) {
        size += PyBytes_GET_SIZE(parts[REDELIVERED]);
    }
    if (item->key_size >= 0) {
        size += attribute_size(PyBytes_GET_SIZE(parts[MESSAGE_KEY_KEY]),
                               1 + uvarint_size((uint64_t)item->key_size) + item->key_size);
    }
    return size;
}

/* The spans' ScopeSpans.spans fields, as receive.py's _write_spans writes them. */
static PyObject *
write_spans(SampledList *list, PyObject *const *parts, int64_t high, int64_t start_ns,
            int64_t end_ns, PyObject *draw)
{
    if (list->count == 0) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    Py_ssize_t wanted = 8 * list->count;
    PyObject *drawn = PyObject_CallFunction(draw, "n", wanted);
    if (drawn == NULL) {
        return NULL;
    }
    if (!PyBytes_CheckExact(drawn) || PyBytes_GET_SIZE(drawn) != wanted) {
        Py_DECREF(drawn);
        PyErr_SetString(PyExc_TypeError, "draw must return as many bytes as asked");
        return NULL;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < list->count; i++) {
        Sampled *item = &list->items[i];
        item->body_size = span_body_size(item, parts, high);
        total += 1 + uvarint_size((uint64_t)item->body_size) + item->body_size;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        Py_DECREF(drawn);
        return NULL;
    }
    const unsigned char *random = (const unsigned char *)PyBytes_AS_STRING(drawn);
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < list->count; i++) {
        const Sampled *item = &list->items[i];
        uint64_t span_id = read_be(random + 8 * i, 8);
        *out++ = 0x12;
        out = put_uvarint(out, (uint64_t)item->body_size);
        *out++ = 0x0A;
        *out++ = 0x10;
        out = put_read_be(out, item->trace_high);
        out = put_read_be(out, item->trace_low);
        *out++ = 0x12;
        *out++ = 0x08;
        out = put_read_be(out, span_id ? span_id : 1);
        *out++ = 0x22;
        *out++ = 0x08;
        out = put_read_be(out, item->parent);
        out = put_bytes(out, parts[HEAD]);
        *out++ = 0x39;
        out = put_little_endian(out, (uint64_t)start_ns);
        *out++ = 0x41;
        out = put_little_endian(out, (uint64_t)(end_ns > start_ns ? end_ns : start_ns));
        out = put_bytes(out, parts[COMMON]);
        out = put_int_attribute(out, parts[OFFSET_KEY], item->offset);
        out = put_int_attribute(out, parts[AGE_KEY], item->age);
        if (item->offset <= high) {
            out = put_bytes(out, parts[REDELIVERED]);
        }
        if (item->key_size >= 0) {
            out = put_str_attribute(out, parts[MESSAGE_KEY_KEY], item->key, item->key_size);
        }
        out = put_bytes(out, parts[TAIL]);
    }
    Py_DECREF(drawn);
    return result;
}

/* An int argument within int64 (and above zero with `positive`): 0, or 1 when it is not. */
static int
int64_argument(PyObject *arg, int positive, int64_t *value)
{
    int overflow;
    long long number = PyLong_Check(arg) ? PyLong_AsLongLongAndOverflow(arg, &overflow) : -1;
    if (!PyLong_Check(arg) || overflow || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 1;
    }
    *value = number;
    return positive && number <= 0;
}

const char receive_spans_doc[] =
    "receive_spans(records, template, high, start_ns, end_ns, now_ms, draw, key_text,\n"
    "              decompress)\n"
    "    -> (highest, record_count, with_context, without_context, fields, spans) | None\n\n"
    "A partition's receive spans in OTLP wire form; None for anything but the usual records.";

PyObject *
receive_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "receive_spans takes 9 arguments");
        return NULL;
    }
    PyObject *template = args[1];
    if (!PyTuple_Check(template) || PyTuple_GET_SIZE(template) != TEMPLATE_PARTS) {
        PyErr_SetString(PyExc_TypeError, "template must be a SpanTemplate");
        return NULL;
    }
    PyObject *parts[TEMPLATE_PARTS];
    for (int i = 0; i < TEMPLATE_PARTS; i++) {
        parts[i] = PyTuple_GET_ITEM(template, i);
        if (!PyBytes_Check(parts[i])) {
            PyErr_SetString(PyExc_TypeError, "template must be a SpanTemplate of bytes");
            return NULL;
        }
    }
    int64_t high, start_ns, end_ns, now_ms;
    if (int64_argument(args[2], 0, &high) || int64_argument(args[3], 1, &start_ns) ||
        int64_argument(args[4], 1, &end_ns) || int64_argument(args[5], 0, &now_ms)) {
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Reading reading = {
        .highest = -1, .now_ms = now_ms, .key_text = args[7], .decompress = args[8]};
    SampledList list = {NULL, 0, 0};
    PyObject *result = NULL;
    reading.bodies = PyList_New(0);
    if (reading.bodies == NULL) {
        goto done;
    }
    int read = read_batches(view.buf, view.len, &reading, &list);
    if (read < 0) {
        goto done;
    }
    if (read > 0 || reading.highest < INT64_MIN || reading.highest > INT64_MAX) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *fields = write_spans(&list, parts, high, start_ns, end_ns, args[6]);
    if (fields != NULL) {
        result = Py_BuildValue("(LLLLNn)", (long long)reading.highest, reading.record_count,
                               reading.with_context, reading.without_context, fields, list.count);
    }
done:
    for (Py_ssize_t i = 0; i < list.count; i++) {
        Py_XDECREF(list.items[i].key_text);
    }
    PyMem_Free(list.items);
    Py_XDECREF(reading.bodies);
    PyBuffer_Release(&view);
    return result;
}
