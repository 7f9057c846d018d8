/* The producer's request lane, part of _speedups: a whole Produce request given root contexts in
 * one call. The twin, which documents the logic, is inject_request_roots_python in
 * proxy/tracing/roots.py.
 *
 * The pairing core calls it for every Produce request while tracing is on, before any Python
 * runs for the request: most requests (every one whose records are all unsampled) then go out
 * without reaching the interpreter at all. It finds the partitions with the guard's schema walk
 * (the program of the request's version, from guard.py), gives each partition's records their
 * contexts with inject_roots_batch, and splices the new records into one new frame. Anything
 * unusual is declined (None), exceptions included, and the general path, which knows how to say
 * what is wrong, handles the request: a header with tagged fields or a client id that is not
 * ASCII, a transactional id or topic name that is not ASCII, a null topic name, a walk that does
 * not end at the frame's end, and any partition inject_roots_batch declines.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_request_roots.h"
#include "_roots.h"
#include "_declining.h"
#include "_schema_walk.h"

#define SIZE_PREFIX 4
#define FLEXIBLE_FROM 9    /* header v2 and compact fields */
#define TOPIC_IDS_FROM 13  /* topics named by id (KIP-516) */
#define TOPIC_ID_SIZE 16

/* The capture ids of produce.py's layout program. */
enum { CAPTURED_TRANSACTIONAL_ID, CAPTURED_TOPIC, CAPTURED_PARTITION, CAPTURED_RECORDS };

/* One captured field: its capture id, start, value start (-1: null) and end in the body. */
typedef struct {
    long kind;
    Py_ssize_t start, value, end;
} Captured;

/* Where the records field of a partition lies in the body, and what replaces its value. */
typedef struct {
    Py_ssize_t start, end; /* the field, length prefix included */
    PyObject *records;     /* new batch bytes (borrowed from the partition's result) */
} Replacement;

Py_ssize_t
produce_plain_header_size(const unsigned char *body, Py_ssize_t size, int api_version)
{
    if (size < 10) {
        return -1;
    }
    int length = (int16_t)((body[8] << 8) | body[9]);
    Py_ssize_t offset = 10;
    if (length >= 0) {
        if (length > size - offset || !is_ascii(body + offset, length)) {
            return -1;
        }
        offset += length;
    }
    else if (length != -1) {
        return -1;
    }
    if (api_version >= FLEXIBLE_FROM) {
        if (offset >= size || body[offset] != 0) {
            return -1;
        }
        offset += 1;
    }
    return offset;
}

static Py_ssize_t
length_prefix(unsigned char *out, int flexible, Py_ssize_t size)
{
    if (!flexible) {
        out[0] = (unsigned char)(size >> 24);
        out[1] = (unsigned char)(size >> 16);
        out[2] = (unsigned char)(size >> 8);
        out[3] = (unsigned char)size;
        return 4;
    }
    uint64_t value = (uint64_t)size + 1;
    Py_ssize_t n = 0;
    while (value >= 0x80) {
        out[n++] = (unsigned char)(value | 0x80);
        value >>= 7;
    }
    out[n++] = (unsigned char)value;
    return n;
}

/* The frame with each replacement's records field rewritten (size prefix included). */
static PyObject *
spliced_frame(const unsigned char *body, Py_ssize_t body_size, int flexible,
              const Replacement *replaced, Py_ssize_t count)
{
    unsigned char prefix[10];
    Py_ssize_t size = body_size;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t records = PyBytes_GET_SIZE(replaced[i].records);
        size += length_prefix(prefix, flexible, records) + records -
                (replaced[i].end - replaced[i].start);
    }
    if (size > INT32_MAX) {
        return Py_NewRef(Py_None);
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, SIZE_PREFIX + size);
    if (frame == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frame);
    out += length_prefix(out, 0, size);
    Py_ssize_t copied = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        memcpy(out, body + copied, (size_t)(replaced[i].start - copied));
        out += replaced[i].start - copied;
        Py_ssize_t records = PyBytes_GET_SIZE(replaced[i].records);
        out += length_prefix(out, flexible, records);
        memcpy(out, PyBytes_AS_STRING(replaced[i].records), (size_t)records);
        out += records;
        copied = replaced[i].end;
    }
    memcpy(out, body + copied, (size_t)(body_size - copied));
    return frame;
}

/* The lane's work; a new reference to its result, to None (declined), NULL on an error. */
static PyObject *
request_roots(PyObject *programs, PyObject *draw, PyObject *threshold_arg, PyObject *crc,
              Py_ssize_t max_batch_bytes, PyObject *frame, const unsigned char *data,
              Py_ssize_t size, int api_version)
{
    PyObject *result = NULL, *captures = NULL, *parts = NULL, *kept = NULL;
    PyObject *transactional_id = NULL;
    Replacement *replaced = NULL;
    Captured *fields = NULL;
    Py_ssize_t replaced_count = 0;
    const unsigned char *threshold;
    if (roots_threshold(threshold_arg, &threshold) < 0) {
        return NULL;
    }
    const unsigned char *body = data + SIZE_PREFIX;
    Py_ssize_t body_size = size - SIZE_PREFIX;
    int flexible = api_version >= FLEXIBLE_FROM;
    Py_ssize_t header_size = body_size < 0 ? -1 : produce_plain_header_size(body, body_size, api_version);
    PyObject *key = PyLong_FromLong(api_version);
    if (key == NULL) {
        return NULL;
    }
    PyObject *program = PyDict_GetItemWithError(programs, key);
    Py_DECREF(key);
    if (program == NULL || header_size < 0) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    captures = PyList_New(0);
    parts = PyList_New(0);
    kept = PyList_New(0); /* every partition's result: they own the batches the splice reads */
    if (captures == NULL || parts == NULL || kept == NULL) {
        goto done;
    }
    Py_ssize_t end = schema_walk_capturing(program, body, body_size, header_size, captures);
    if (end == -2) {
        goto done;
    }
    if (end != body_size) {
        goto declined;
    }
    Py_ssize_t captured = PyList_GET_SIZE(captures);
    replaced = PyMem_Malloc(sizeof(Replacement) * (size_t)(captured ? captured : 1));
    fields = PyMem_Malloc(sizeof(Captured) * (size_t)(captured ? captured : 1));
    if (replaced == NULL || fields == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* The names first: a request the general path must judge is declined before any draw. */
    for (Py_ssize_t i = 0; i < captured; i++) {
        PyObject *entry = PyList_GET_ITEM(captures, i);
        Captured *field = &fields[i];
        field->kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
        field->start = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
        field->value = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2));
        field->end = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 3));
        if (PyErr_Occurred()) {
            goto done;
        }
        int named = field->kind == CAPTURED_TRANSACTIONAL_ID ||
                    (field->kind == CAPTURED_TOPIC && api_version < TOPIC_IDS_FROM);
        if (named && field->value >= 0 &&
            !is_ascii(body + field->value, field->end - field->value)) {
            goto declined; /* a name to decode in full */
        }
        if (field->kind == CAPTURED_TOPIC && api_version < TOPIC_IDS_FROM && field->value < 0) {
            goto declined; /* a null topic name */
        }
        if (field->kind == CAPTURED_PARTITION && field->end - field->start != 4) {
            goto declined; /* not the int32 the layout has: not a program of this file's */
        }
    }
    Py_ssize_t topic_start = 0, topic_end = 0, txn_start = -1, txn_end = -1;
    long partition = 0;
    long long records = 0;
    for (Py_ssize_t i = 0; i < captured; i++) {
        long kind = fields[i].kind;
        Py_ssize_t start = fields[i].start, value = fields[i].value, stop = fields[i].end;
        if (kind == CAPTURED_TRANSACTIONAL_ID) {
            txn_start = value;
            txn_end = stop;
        }
        else if (kind == CAPTURED_TOPIC) {
            topic_start = api_version >= TOPIC_IDS_FROM ? start : value;
            topic_end = stop;
        }
        else if (kind == CAPTURED_PARTITION) {
            partition = read_int32(body + start);
        }
        else if (kind == CAPTURED_RECORDS && value >= 0) {
            PyObject *injected = inject_roots_batch(body + value, stop - value, draw, threshold,
                                                    crc, max_batch_bytes);
            int failed = injected == NULL || PyList_Append(kept, injected) < 0;
            Py_XDECREF(injected); /* kept holds it */
            if (failed) {
                goto done;
            }
            if (injected == Py_None) {
                goto declined;
            }
            replaced[replaced_count].start = start;
            replaced[replaced_count].end = stop;
            replaced[replaced_count].records = PyTuple_GET_ITEM(injected, 0);
            replaced_count++;
            if (PyList_GET_SIZE(PyTuple_GET_ITEM(injected, 2)) == 0) {
                records += PyLong_AsLongLong(PyTuple_GET_ITEM(injected, 1));
                continue;
            }
            PyObject *topic = api_version >= TOPIC_IDS_FROM
                ? PyBytes_FromStringAndSize((const char *)body + topic_start,
                                            topic_end - topic_start)
                : PyUnicode_DecodeASCII((const char *)body + topic_start,
                                        topic_end - topic_start, NULL);
            PyObject *part = topic == NULL ? NULL
                : Py_BuildValue("(NlnnO)", topic, partition, value + SIZE_PREFIX,
                                stop + SIZE_PREFIX, injected);
            if (part == NULL || PyList_Append(parts, part) < 0) {
                Py_XDECREF(part);
                goto done;
            }
            Py_DECREF(part);
        }
    }
    if (PyList_GET_SIZE(parts) > 0 && txn_start >= 0) {
        transactional_id = PyUnicode_DecodeASCII((const char *)body + txn_start,
                                                 txn_end - txn_start, NULL);
        if (transactional_id == NULL) {
            goto done;
        }
    }
    PyObject *out = frame;
    Py_INCREF(out);
    if (replaced_count > 0) {
        Py_DECREF(out);
        out = spliced_frame(body, body_size, flexible, replaced, replaced_count);
        if (out == NULL) {
            goto done;
        }
        if (out == Py_None) {
            Py_DECREF(out);
            goto declined;
        }
    }
    result = Py_BuildValue("(NLOO)", out, records, transactional_id ? transactional_id : Py_None,
                           parts);
    goto done;

declined:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(kept);
    Py_XDECREF(transactional_id);
    Py_XDECREF(captures);
    Py_XDECREF(parts);
    PyMem_Free(replaced);
    PyMem_Free(fields);
    return result;
}

const char inject_request_roots_doc[] =
"inject_request_roots(programs, draw, threshold, crc, max_batch_bytes, frame, api_version)\n"
"    -> tuple[bytes, int, str | None, list[tuple[str | bytes, int, int, int, tuple]]] | None\n\n"
"The twin of proxy/tracing/roots.py's inject_request_roots_python: a Produce request frame\n"
"with a new root traceparent on every record of every partition, the records of partitions\n"
"without a sampled one, the transactional id (read when any is sampled), and per partition\n"
"with sampled records (topic name, or raw topic id from v13 on, partition, start and end of\n"
"its original records in the frame, inject_roots' result). None: declined, for the general\n"
"path.";

PyObject *
inject_request_roots(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "inject_request_roots takes 7 arguments");
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t max_batch_bytes = PyLong_AsSsize_t(args[4]);
    long api_version = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) {
        /* not ints, or too large: declined below, as the twin declines what it cannot use */
    }
    else if (api_version < INT16_MIN || api_version > INT16_MAX || !PyDict_Check(args[0])) {
        result = Py_NewRef(Py_None); /* no Produce version, or no programs: nothing to walk */
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(args[5], &view, PyBUF_SIMPLE) == 0) {
            result = request_roots(args[0], args[1], args[2], args[3], max_batch_bytes, args[5],
                                   view.buf, view.len, (int)api_version);
            PyBuffer_Release(&view);
        }
    }
    return declined_on_error(result);
}
