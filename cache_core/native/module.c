/* SPDX-License-Identifier: Apache-2.0 */
/* cache_core._native: the module object; each concern registers itself (native.h). */
#include "native.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    "cache_core._native",
    "The compiled serving core of the cache: keyed fingerprints, the RESP request parser "
    "and the access log's row writes.",
    -1,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (predis_blake2b_init(module) < 0 || predis_parser_init(module) < 0 ||
        predis_ring_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
