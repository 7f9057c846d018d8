/* The producer's request lane (_request_roots.c), exported into the _speedups module's method
 * table. */
#ifndef KTP_REQUEST_ROOTS_H
#define KTP_REQUEST_ROOTS_H

#include <Python.h>

extern const char inject_request_roots_doc[];
PyObject *inject_request_roots(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
