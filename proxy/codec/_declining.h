/* What the compiled lanes (_request_roots.c, _fetch_skim.c) share: they read a peer's bytes and
 * decline (None) anything they cannot take, leaving it to the general path, which says what is
 * wrong. */
#ifndef KTP_DECLINING_H
#define KTP_DECLINING_H

#include <Python.h>
#include <stdint.h>

static inline int
is_ascii(const unsigned char *data, Py_ssize_t size)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        if (data[i] & 0x80) {
            return 0;
        }
    }
    return 1;
}

/* A big-endian int32, as Kafka writes partition indexes. */
static inline int32_t
read_int32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     p[3]);
}

/* `result`, or None in place of an error that is an Exception (a peer's bytes, or arguments
 * the lane cannot use); other errors (KeyboardInterrupt, MemoryError's kin) go on. */
static inline PyObject *
declined_on_error(PyObject *result)
{
    if (result == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    return result;
}

#endif
