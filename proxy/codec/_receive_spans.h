/* The consumer's receive spans in OTLP wire form (_receive_spans.c). */
#ifndef KTP_RECEIVE_SPANS_H
#define KTP_RECEIVE_SPANS_H

#include <Python.h>

extern const char receive_spans_doc[];
PyObject *receive_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
