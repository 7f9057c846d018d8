/* The producer's fast path over one batch (_speedups.c), shared with the request lane
 * (_request_roots.c). */
#ifndef KTP_ROOTS_H
#define KTP_ROOTS_H

#include <Python.h>

/* The sampler's threshold argument (16 hex digits as bytes, or None: every root sampled);
 * 0, or -1 with TypeError set. */
int roots_threshold(PyObject *threshold_arg, const unsigned char **threshold);

/* inject_roots over `size` bytes at `batch`: a new reference to (new batch, record count,
 * sampled) or to None (not the fast path's case), NULL with an exception set. */
PyObject *inject_roots_batch(const unsigned char *batch, Py_ssize_t size, PyObject *draw,
                             const unsigned char *threshold, PyObject *crc,
                             Py_ssize_t max_batch_bytes);

#endif
