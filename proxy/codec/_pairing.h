/* PairingCore (_pairing.c), added to the _speedups module at import. */
#ifndef KTP_PAIRING_H
#define KTP_PAIRING_H

#include <Python.h>

int pairing_add_type(PyObject *module);

#endif
