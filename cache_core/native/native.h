/* SPDX-License-Identifier: Apache-2.0 */
/* The compiled serving core of the cache (cache_core._native): one module, one file per
 * concern. Each file registers its types and functions on the module. */
#ifndef PREDIS_NATIVE_H
#define PREDIS_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

int predis_blake2b_init(PyObject *module);
int predis_parser_init(PyObject *module);
int predis_ring_init(PyObject *module);
int predis_table_init(PyObject *module);

/* Keyed BLAKE2b (RFC 7693) with a 16-byte digest, primed with its key block. */
typedef struct {
    uint64_t h[8];
} predis_blake2b_primed;

void predis_blake2b_prime(predis_blake2b_primed *state, const uint8_t *key, size_t keylen,
                          const uint8_t *person, size_t personlen);
/* The 16-byte digest of `data` under a primed state: (hi, lo) as the digest's bytes 0..7
 * and 8..15 read little-endian. */
void predis_blake2b_fingerprint(const predis_blake2b_primed *state, const uint8_t *data,
                                size_t len, uint64_t *hi, uint64_t *lo);

#endif
