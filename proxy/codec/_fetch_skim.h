/* The skim of a whole Fetch response (_fetch_skim.c), and the per-partition skim it is built on
 * (_speedups.c). */
#ifndef KTP_FETCH_SKIM_H
#define KTP_FETCH_SKIM_H

#include <Python.h>

/* skim_batches over `total` bytes at `data`: a new reference to (highest offset, record count,
 * wanted), NULL with ValueError set for batches the skim cannot read. With `until_wanted`, it
 * stops at the first batch it names in wanted (the other figures are then partial): for a
 * caller that only needs to know whether there is any. */
PyObject *skim_batches_in(const unsigned char *data, Py_ssize_t total, int until_wanted);

extern const char skim_fetch_response_doc[];
PyObject *skim_fetch_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

extern const char skim_fetch_frame_doc[];
PyObject *skim_fetch_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
