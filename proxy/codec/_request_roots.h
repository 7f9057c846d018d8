/* The producer's request lane (_request_roots.c), exported into the _speedups module's method
 * table. */
#ifndef KTP_REQUEST_ROOTS_H
#define KTP_REQUEST_ROOTS_H

#include <Python.h>

/* The size of a Produce request's header when it is plain: an ASCII (or null) client id and,
 * in flexible versions, no tagged fields; -1 for any other header (produce.py's
 * plain_header_size is the twin). The pairing core reads acks after it too. */
Py_ssize_t produce_plain_header_size(const unsigned char *body, Py_ssize_t size, int api_version);

extern const char inject_request_roots_doc[];
PyObject *inject_request_roots(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
