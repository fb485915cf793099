/* SPDX-License-Identifier: Apache-2.0 */
#include "native.h"
int predis_table_init(PyObject *module) { (void)module; return 0; }
