/* The schema walk (_schema_walk.c), exported into the _speedups module's method table. */
#ifndef KTP_SCHEMA_WALK_H
#define KTP_SCHEMA_WALK_H

#include <Python.h>

extern const char walk_schema_doc[];
PyObject *walk_schema(PyObject *self, PyObject *args);

#endif
