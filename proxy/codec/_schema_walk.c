/* The compiled twin of the guard's schema walk (proxy/codec/guard.py), part of _speedups.
 *
 * The walk runs for every Produce and Fetch response (to learn whether it carries KIP-951 node
 * endpoints, its only top-level tagged field) and before kio decodes any message (to refuse
 * arrays that announce more elements than the frame holds). In Python it costs 5-10 µs per
 * message; this interpreter of the same walk costs well under one.
 *
 * It does not read kio's schemas itself: guard.py compiles each schema once into a "program" of
 * nested tuples, and this file interprets it. A program for an entity is
 *
 *     (flexible, steps, tagged)    steps: a tuple of steps; tagged: a tuple of (tag, step)
 *
 * and a step is one of
 *
 *     (0, size)                    fixed-size fields: skip `size` bytes
 *     (1, flexible, width)         a string or bytes: a length (varint of length + 1 when
 *                                  flexible, else a signed int of `width` bytes), then the bytes
 *     (2, flexible, element)       an array: a count (varint of count + 1, or int32), then the
 *                                  elements, each walked by the step `element`
 *     (3, program)                 an embedded entity
 *     (4, program)                 a nullable entity: int8 -1 for null, else the entity
 *     (5, id, step)                the step, and (id, start, value start, end) of the bytes it
 *                                  crossed appended to the captures list, when one is given; the
 *                                  value of a string or bytes starts after its length (-1: null)
 *
 * The results are those of the Python walk (guard.walk_python): the position where the message
 * ends and the tags of its own tagged fields (and the captures), or None when the walk cannot finish (truncated input, an unknown tag);
 * an array announcing more elements than bytes left raises ValueError. Every read is bounds-checked;
 * the program is trusted (it comes from guard.py), the bytes are not.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "_schema_walk.h"

/* The walk cannot go on: the Python twin's _Incomplete. */
#define INCOMPLETE (-1)
/* An exception is set. */
#define FAILED (-2)

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
    PyObject *captures; /* a list, or NULL: nothing is recorded */
} Input;

static Py_ssize_t walk_entity(PyObject *program, const Input *in, Py_ssize_t pos, PyObject *tags);

/* An unsigned varint of up to 5 bytes, as guard._uvarint reads it (not masked to 32 bits). */
static Py_ssize_t
read_uvarint(const Input *in, Py_ssize_t pos, int64_t *value)
{
    int64_t result = 0;
    for (int count = 0; count < 5; count++) {
        if (pos + count >= in->size)
            return INCOMPLETE;
        unsigned char byte = in->data[pos + count];
        result |= (int64_t)(byte & 0x7F) << (7 * count);
        if (!(byte & 0x80)) {
            *value = result;
            return pos + count + 1;
        }
    }
    return INCOMPLETE;
}

static Py_ssize_t
read_signed(const Input *in, Py_ssize_t pos, int width, int64_t *value)
{
    if (pos + width > in->size)
        return INCOMPLETE;
    uint64_t raw = 0;
    for (int i = 0; i < width; i++)
        raw = (raw << 8) | in->data[pos + i];
    int shift = 64 - 8 * width;
    *value = (int64_t)(raw << shift) >> shift;
    return pos + width;
}

/* Programs come from guard.py, but this is a public function: a malformed one is refused with
 * SystemError, never read out of bounds. */
static int
bad_program(void)
{
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "walk_schema: malformed program");
    return FAILED;
}

/* Item `index` of `tuple` (which must have more than `index` items), NULL if it has not. */
static PyObject *
item(PyObject *tuple, Py_ssize_t index)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) <= index)
        return NULL;
    return PyTuple_GET_ITEM(tuple, index);
}

/* Integer item `index` of `tuple`; -1 with an exception set when it is not one. */
static long
item_long(PyObject *tuple, Py_ssize_t index)
{
    PyObject *value = item(tuple, index);
    if (value == NULL || !PyLong_Check(value)) {
        bad_program();
        return -1;
    }
    return PyLong_AsLong(value);
}

/* A length or count: varint of value + 1 when flexible, else a signed int of `width` bytes. */
static Py_ssize_t
read_length(const Input *in, Py_ssize_t pos, int flexible, int width, int64_t *value)
{
    if (flexible) {
        pos = read_uvarint(in, pos, value);
        *value -= 1;
        return pos;
    }
    return read_signed(in, pos, width, value);
}

static Py_ssize_t
walk_step(PyObject *step, const Input *in, Py_ssize_t pos)
{
    int64_t value;
    long kind = item_long(step, 0); /* a program's integers are never -1: -1 is an error */
    if (kind == -1)
        return FAILED;
    switch (kind) {
    case 0: { /* fixed */
        long size = item_long(step, 1);
        if (size < 0)
            return bad_program();
        return size > in->size - pos ? INCOMPLETE : pos + size;
    }
    case 1: { /* sized */
        long flexible = item_long(step, 1), width = item_long(step, 2);
        if (flexible == -1 || (width != 2 && width != 4))
            return bad_program();
        pos = read_length(in, pos, (int)flexible, (int)width, &value);
        if (pos < 0)
            return pos;
        if (value < -1)
            return INCOMPLETE; /* kio refuses it with its own error */
        if (value > 0) {
            if (value > in->size - pos)
                return INCOMPLETE;
            pos += (Py_ssize_t)value;
        }
        return pos;
    }
    case 2: { /* array */
        long flexible = item_long(step, 1);
        PyObject *element = item(step, 2);
        if (flexible == -1 || element == NULL)
            return bad_program();
        pos = read_length(in, pos, (int)flexible, 4, &value);
        if (pos < 0)
            return pos;
        if (value < -1)
            return INCOMPLETE;
        if (value > in->size - pos) {
            PyErr_Format(PyExc_ValueError, "an array announces %lld elements with %zd bytes left",
                         (long long)value, in->size - pos);
            return FAILED;
        }
        for (int64_t i = 0; i < value; i++) {
            pos = walk_step(element, in, pos);
            if (pos < 0)
                return pos;
        }
        return pos;
    }
    case 3: /* entity */
        if (item(step, 1) == NULL)
            return bad_program();
        return walk_entity(item(step, 1), in, pos, NULL);
    case 4: /* nullable entity */
        if (item(step, 1) == NULL)
            return bad_program();
        pos = read_signed(in, pos, 1, &value);
        if (pos < 0 || value == -1)
            return pos;
        return walk_entity(item(step, 1), in, pos, NULL);
    case 5: { /* capture */
        PyObject *inner = item(step, 2);
        if (inner == NULL || item(step, 1) == NULL)
            return bad_program();
        Py_ssize_t end = walk_step(inner, in, pos);
        if (end < 0 || in->captures == NULL)
            return end;
        /* Where a string's or bytes' value starts (-1: null); the field's start otherwise. */
        Py_ssize_t value_start = pos;
        if (item_long(inner, 0) == 1) {
            value_start = read_length(in, pos, (int)item_long(inner, 1), (int)item_long(inner, 2),
                                      &value);
            if (value < 0)
                value_start = -1;
        }
        PyObject *entry = Py_BuildValue("(Onnn)", item(step, 1), pos, value_start, end);
        int failed = entry == NULL || PyList_Append(in->captures, entry) < 0;
        Py_XDECREF(entry);
        return failed ? FAILED : end;
    }
    default:
        PyErr_SetString(PyExc_SystemError, "schema walk: unknown step in the program");
        return FAILED;
    }
}

/* The step of a tagged field, NULL for a tag the schema does not define (or, with an exception
 * set, for a malformed program). */
static PyObject *
tagged_step(PyObject *tagged, int64_t tag)
{
    if (!PyTuple_Check(tagged)) {
        bad_program();
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(tagged);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyTuple_GET_ITEM(tagged, i);
        long known = item_long(pair, 0);
        if (known == -1)
            return NULL;
        if (known == tag) {
            PyObject *step = item(pair, 1);
            if (step == NULL)
                bad_program();
            return step;
        }
    }
    return NULL;
}

static Py_ssize_t
walk_tags(PyObject *tagged, const Input *in, Py_ssize_t pos, PyObject *tags)
{
    int64_t count, tag, size;
    pos = read_uvarint(in, pos, &count);
    if (pos < 0)
        return pos;
    for (int64_t i = 0; i < count; i++) {
        pos = read_uvarint(in, pos, &tag);
        if (pos < 0)
            return pos;
        pos = read_uvarint(in, pos, &size);
        if (pos < 0)
            return pos;
        PyObject *step = tagged_step(tagged, tag);
        if (step == NULL)
            return PyErr_Occurred() ? FAILED : INCOMPLETE;
        pos = walk_step(step, in, pos);
        if (pos < 0)
            return pos;
        if (tags != NULL) {
            PyObject *key = PyLong_FromLongLong(tag);
            int failed = key == NULL || PyList_Append(tags, key) < 0;
            Py_XDECREF(key);
            if (failed)
                return FAILED;
        }
    }
    return pos;
}

static Py_ssize_t
walk_entity(PyObject *program, const Input *in, Py_ssize_t pos, PyObject *tags)
{
    PyObject *steps = item(program, 1), *tagged = item(program, 2);
    long flexible = item_long(program, 0);
    if (flexible == -1 || steps == NULL || tagged == NULL || !PyTuple_Check(steps))
        return bad_program();
    /* Programs nest as deep as kio's schemas; a made-up one must not exhaust the C stack. */
    if (Py_EnterRecursiveCall(" in the schema walk"))
        return FAILED;
    Py_ssize_t count = PyTuple_GET_SIZE(steps);
    for (Py_ssize_t i = 0; i < count && pos >= 0; i++) {
        pos = walk_step(PyTuple_GET_ITEM(steps, i), in, pos);
    }
    Py_LeaveRecursiveCall();
    if (pos < 0)
        return pos;
    return flexible ? walk_tags(tagged, in, pos, tags) : pos;
}

const char walk_schema_doc[] =
"walk_schema(program, body, offset, captures=None) -> (end, tags) | None\n\n"
"Walk the message that starts at `offset` in `body` with a program from guard.py. Returns the\n"
"position where it ends and the list of its own tags, or None when the walk cannot finish;\n"
"captured fields are appended to `captures` (a list) as (id, start, value start, end).\n"
"Raises ValueError\n"
"for an array announcing more elements than bytes left.";

PyObject *
walk_schema(PyObject *self, PyObject *args)
{
    PyObject *program;
    Py_buffer view;
    Py_ssize_t offset;
    PyObject *captures = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!y*n|O", &PyTuple_Type, &program, &view, &offset, &captures))
        return NULL;
    if (captures != Py_None && !PyList_Check(captures)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "walk_schema: captures must be a list or None");
        return NULL;
    }
    if (offset < 0 || offset > view.len) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE; /* nothing to walk there, as in the Python twin */
    }
    PyObject *tags = PyList_New(0);
    if (tags == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Input in = {(const unsigned char *)view.buf, view.len, captures == Py_None ? NULL : captures};
    Py_ssize_t end = walk_entity(program, &in, offset, tags);
    PyBuffer_Release(&view);
    if (end == FAILED) {
        Py_DECREF(tags);
        return NULL;
    }
    if (end == INCOMPLETE) {
        Py_DECREF(tags);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nN)", end, tags);
}

int
schema_walk_untagged(PyObject *program, const unsigned char *data, Py_ssize_t size,
                     Py_ssize_t offset)
{
    if (offset < 0 || offset > size) {
        return 0;
    }
    PyObject *tags = PyList_New(0);
    if (tags == NULL) {
        PyErr_Clear();
        return 0;
    }
    Input in = {data, size, NULL};
    Py_ssize_t end = walk_entity(program, &in, offset, tags);
    int untagged = end == size && PyList_GET_SIZE(tags) == 0;
    Py_DECREF(tags);
    if (end == FAILED) {
        PyErr_Clear(); /* the owner's own walk of the same bytes reports it */
    }
    return untagged;
}

Py_ssize_t
schema_walk_capturing(PyObject *program, const unsigned char *data, Py_ssize_t size,
                      Py_ssize_t offset, PyObject *captures)
{
    if (offset < 0 || offset > size) {
        return INCOMPLETE;
    }
    Input in = {data, size, captures};
    return walk_entity(program, &in, offset, NULL);
}
