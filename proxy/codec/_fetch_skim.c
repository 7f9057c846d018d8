/* The skim of a whole Fetch response in one call, part of _speedups. The twin, which documents
 * the logic, is skim_fetch_response_python in proxy/tracing/skim.py.
 *
 * With tracing on, every Fetch response is read after it was sent, for records that carry a
 * sampled context. Nearly all responses at low sampling rates have none, and for those all the
 * consumer needs is, per partition, the highest offset delivered and how many records went by.
 * This call finds the partitions with the guard's schema walk (the program of the response's
 * version, from fetch.py) and skims each partition's records (skim_batches_in), returning those
 * figures; it declines (None) anything else, which the general path then reads in full: a hit,
 * aborted transactions, a null topic name or one that is not ASCII, a walk that does not end at
 * the body's end, a partition the skim cannot read. It never raises for the peer's bytes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "_fetch_skim.h"
#include "_declining.h"
#include "_schema_walk.h"

#define TOPIC_IDS_FROM 13 /* topics named by id (KIP-516) */
#define SIZE_PREFIX 4     /* a frame's length, before its body */

/* The capture ids of fetch.py's layout program. */
enum {
    CAPTURED_TOPIC,
    CAPTURED_PARTITION,
    CAPTURED_ERROR,
    CAPTURED_HIGH_WATERMARK,
    CAPTURED_ABORTED_PRODUCER,
    CAPTURED_ABORTED_OFFSET,
    CAPTURED_RECORDS,
};

/* A new reference to the partitions' figures, to None (declined), NULL on an error. */
static PyObject *
skim_response(PyObject *program, const unsigned char *body, Py_ssize_t size, Py_ssize_t offset,
              long api_version)
{
    PyObject *captures = PyList_New(0);
    PyObject *skimmed = PyList_New(0);
    PyObject *topic = NULL, *result = NULL;
    if (captures == NULL || skimmed == NULL) {
        goto done;
    }
    Py_ssize_t end = schema_walk_capturing(program, body, size, offset, captures);
    if (end == -2) {
        goto done;
    }
    if (end != size) {
        goto declined;
    }
    long partition = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(captures); i++) {
        PyObject *entry = PyList_GET_ITEM(captures, i);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
        Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
        Py_ssize_t value = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2));
        Py_ssize_t stop = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 3));
        if (PyErr_Occurred()) {
            goto done;
        }
        if (kind == CAPTURED_TOPIC) {
            Py_CLEAR(topic);
            if (api_version >= TOPIC_IDS_FROM) {
                topic = PyBytes_FromStringAndSize((const char *)body + start, stop - start);
            }
            else if (value < 0 || !is_ascii(body + value, stop - value)) {
                goto declined; /* a null name, or one to decode in full */
            }
            else {
                topic = PyUnicode_DecodeASCII((const char *)body + value, stop - value, NULL);
            }
            if (topic == NULL) {
                goto done;
            }
        }
        else if (kind == CAPTURED_PARTITION) {
            if (stop - start != 4) {
                goto declined;
            }
            partition = read_int32(body + start);
        }
        else if (kind == CAPTURED_ABORTED_PRODUCER || kind == CAPTURED_ABORTED_OFFSET) {
            goto declined; /* which records a consumer sees depends on them */
        }
        else if (kind == CAPTURED_RECORDS && value >= 0 && stop > value) {
            if (topic == NULL) {
                goto declined;
            }
            /* Up to the first record to read, if any: the response is then declined. */
            PyObject *skim = skim_batches_in(body + value, stop - value, 1);
            if (skim == NULL) {
                goto done;
            }
            if (PyList_GET_SIZE(PyTuple_GET_ITEM(skim, 2)) > 0) {
                Py_DECREF(skim);
                goto declined; /* a record to read: the general path */
            }
            PyObject *figures = Py_BuildValue("(OlOO)", topic, partition,
                                              PyTuple_GET_ITEM(skim, 0), PyTuple_GET_ITEM(skim, 1));
            Py_DECREF(skim);
            if (figures == NULL || PyList_Append(skimmed, figures) < 0) {
                Py_XDECREF(figures);
                goto done;
            }
            Py_DECREF(figures);
        }
    }
    result = Py_NewRef(skimmed);
    goto done;

declined:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(topic);
    Py_XDECREF(captures);
    Py_XDECREF(skimmed);
    return result;
}

const char skim_fetch_response_doc[] =
"skim_fetch_response(program, body, offset, api_version)\n"
"    -> list[tuple[str | bytes, int, int, int]] | None\n\n"
"The twin of proxy/tracing/skim.py's skim_fetch_response_python: per partition with records of\n"
"a Fetch response body whose message starts at offset, (topic name, or raw topic id from v13\n"
"on, partition, highest offset, record count) when no record may carry a sampled context;\n"
"None: declined, for the general path.";

PyObject *
skim_fetch_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "skim_fetch_response takes 4 arguments");
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    long api_version = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) {
        /* not ints, or too large: declined below, as the twin declines what it cannot use */
    }
    else if (!PyTuple_Check(args[0]) || api_version < INT16_MIN || api_version > INT16_MAX) {
        result = Py_NewRef(Py_None); /* no program, or no Fetch version */
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) == 0) {
            result = skim_response(args[0], view.buf, view.len, offset, api_version);
            PyBuffer_Release(&view);
        }
    }
    return declined_on_error(result);
}

const char skim_fetch_frame_doc[] =
"skim_fetch_frame(programs, frame, api_version)\n"
"    -> list[tuple[str | bytes, int, int, int]] | None\n\n"
"The twin of proxy/tracing/skim.py's skim_fetch_frame_python: skim_fetch_response for a whole\n"
"response frame (size prefix first), walked with programs[api_version], its header of v1 when\n"
"that program is flexible (tagged header fields are declined); None: declined, for the general\n"
"path. The pairing core's fetch lane.";

PyObject *
skim_fetch_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "skim_fetch_frame takes 3 arguments");
        return NULL;
    }
    if (!PyDict_Check(args[0])) {
        return Py_NewRef(Py_None);
    }
    long api_version = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return declined_on_error(NULL); /* not ints, or too large: declined, as the twin does */
    }
    if (api_version < INT16_MIN || api_version > INT16_MAX) {
        return Py_NewRef(Py_None); /* no Fetch version */
    }
    PyObject *program = PyDict_GetItemWithError(args[0], args[2]); /* borrowed */
    if (program == NULL) {
        return declined_on_error(PyErr_Occurred() ? NULL : Py_NewRef(Py_None));
    }
    if (!PyTuple_Check(program) || PyTuple_GET_SIZE(program) < 1) {
        return Py_NewRef(Py_None);
    }
    int flexible = PyObject_IsTrue(PyTuple_GET_ITEM(program, 0));
    if (flexible < 0) {
        return declined_on_error(NULL);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return declined_on_error(NULL);
    }
    Py_INCREF(program); /* the dict is the caller's */
    PyObject *result;
    const unsigned char *body = (const unsigned char *)view.buf + SIZE_PREFIX;
    Py_ssize_t size = view.len - SIZE_PREFIX;
    Py_ssize_t offset = flexible ? 5 : 4; /* correlation id, then no tagged fields when flexible */
    if (size < offset || (flexible && body[4] != 0)) {
        result = Py_NewRef(Py_None);
    }
    else {
        result = skim_response(program, body, size, offset, api_version);
    }
    Py_DECREF(program);
    PyBuffer_Release(&view);
    return declined_on_error(result);
}
