/* The schema walk (_schema_walk.c), exported into the _speedups module's method table. */
#ifndef KTP_SCHEMA_WALK_H
#define KTP_SCHEMA_WALK_H

#include <Python.h>

extern const char walk_schema_doc[];
PyObject *walk_schema(PyObject *self, PyObject *args);

/* For PairingCore: 1 when the message at `offset` walks to exactly `size` and has no tagged
 * fields of its own, else 0 (an error the walk raised is cleared: the owner walks it again). */
int schema_walk_untagged(PyObject *program, const unsigned char *data, Py_ssize_t size,
                         Py_ssize_t offset);

/* For the request lane (_request_roots.c): walk the message at `offset` appending captures to
 * the list `captures`; where it ends, -1 when the walk cannot finish, -2 with an exception set
 * (an array announcing more elements than bytes left, raised as ValueError). */
Py_ssize_t schema_walk_capturing(PyObject *program, const unsigned char *data, Py_ssize_t size,
                                 Py_ssize_t offset, PyObject *captures);

#endif
