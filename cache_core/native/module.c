/* SPDX-License-Identifier: Apache-2.0 */
/* cache_core._native: the module object; each concern registers itself (native.h). */
#include "native.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* trim_heap(): give the allocator's free memory back to the system (glibc's malloc_trim);
 * False where the C library has no such call. After the hash table grows, the arrays it
 * replaced were freed into the heap (glibc raises its mmap threshold to the size of the
 * largest block freed), and without a trim they stay resident. */
static PyObject *trim_heap(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#if defined(__GLIBC__)
    int released;
    Py_BEGIN_ALLOW_THREADS
    released = malloc_trim(0);
    Py_END_ALLOW_THREADS
    (void)released;
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef module_functions[] = {
    {"trim_heap", trim_heap, METH_NOARGS, "Give the allocator's free memory back to the system; False where unsupported."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    "cache_core._native",
    "The compiled serving core of the cache: keyed fingerprints, the RESP request parser "
    "the access log's row writes and the hash table's operations on host memory.",
    -1,
    module_functions,
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
        predis_ring_init(module) < 0 || predis_table_init(module) < 0 ||
        predis_reads_init(module) < 0 || predis_ctable_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
