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

#endif
