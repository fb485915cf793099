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
int predis_reads_init(PyObject *module);
int predis_ctable_init(PyObject *module);

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
/* The fingerprints of n keys (hi[i], lo[i] as above), keys of at most one block hashed
 * several at a time on the CPU's vector unit. */
void predis_blake2b_fingerprint_many(const predis_blake2b_primed *state, const uint8_t *const *data,
                                     const size_t *len, size_t n, uint64_t *hi, uint64_t *lo);

/* Log n events into an access log ring (cache_core._native.EventColumns, ring.c) in one
 * locked write stamped with the realtime clock, as its log() method does: fingerprints,
 * results and sizes (clamped to 32 bits). -1 with an exception when `ring` is not one. */
int predis_ring_log(PyObject *ring, uint8_t op, const uint64_t *fps, const uint8_t *results, const int64_t *sizes,
                    Py_ssize_t n);

/* Fetch for writing the slots of the events that a log of `n` more events, `from` events
 * after the ring's current head, will take (at most two lines per column: callers ask for
 * a block of a few events at a time); nothing when `ring` is not an initialised ring. */
void predis_ring_prefetch(PyObject *ring, Py_ssize_t from, Py_ssize_t n);

/* The host cache's hash table (cache_core._native.CompactTable, ctable.c): a slot is
 * (fingerprint's hi >> 32) << 32 | ID, ID 0 empty, 1 a tombstone, eid + 2 the entry eid,
 * whose fingerprint e_hi[eid], e_lo[eid] confirms a match. */
#define PREDIS_ID_EMPTY 0u
#define PREDIS_ID_TOMBSTONE 1u
#define PREDIS_ID_BASE 2u

typedef struct {
    PyObject_HEAD
    Py_buffer fp[2]; /* the entries' e_hi and e_lo */
    int held;
    const uint64_t *e_hi, *e_lo;
    Py_ssize_t entries;
    uint64_t *slots;
    Py_ssize_t capacity;
    uint64_t mask;
    Py_ssize_t len, tombstones;
} predis_ctable;

/* The CompactTable behind `obj` (TypeError, or ValueError when uninitialised: NULL). */
predis_ctable *predis_as_ctable(PyObject *obj);
/* The entry holding (hi, lo), or -1. */
int64_t predis_ctable_find(const predis_ctable *t, uint64_t hi, uint64_t lo);

/* The slot holding (hi, lo) or -1; *free gets the first slot of its chain that holds no
 * key (where an insert puts it), -1 when the chain has none before its end. */
static inline int64_t predis_ctable_probe(const predis_ctable *t, uint64_t hi, uint64_t lo, int64_t *free)
{
    uint64_t pos = lo & t->mask;
    int64_t first = -1;
    for (Py_ssize_t i = 0; i < t->capacity; i++) {
        uint64_t slot = t->slots[pos];
        uint32_t id = (uint32_t)slot;
        if (id >= PREDIS_ID_BASE) {
            if ((uint32_t)(slot >> 32) == (uint32_t)(hi >> 32)) {
                uint32_t eid = id - PREDIS_ID_BASE;
                if (t->e_lo[eid] == lo && t->e_hi[eid] == hi) {
                    *free = first;
                    return (int64_t)pos;
                }
            }
        } else {
            if (first < 0)
                first = (int64_t)pos;
            if (id == PREDIS_ID_EMPTY)
                break;
        }
        pos = (pos + 1) & t->mask;
    }
    *free = first;
    return -1;
}

/* The hash table's host arrays (cache_core._native.TableView, table.c). */
#define PREDIS_EMPTY 0
#define PREDIS_FULL 1
#define PREDIS_TOMBSTONE 2

typedef struct {
    PyObject_HEAD
    Py_buffer buf[4]; /* keys (capacity, 2) uint64; state uint8; handle int64; claim int64 */
    int held;
    uint64_t *keys;
    uint8_t *state;
    int64_t *handle;
    int64_t *claim;
    Py_ssize_t capacity;
    uint64_t mask;
} predis_table;

/* The TableView behind `obj` (TypeError, or ValueError when uninitialised: NULL). */
predis_table *predis_as_table(PyObject *obj);
/* The Blake2b state behind `obj` (TypeError: NULL). */
const predis_blake2b_primed *predis_as_blake2b(PyObject *obj);

/* The slot holding (hi, lo) or -1; *free gets the first slot of the chain that is not
 * FULL, or -1 when none was met before the key or the chain's end. */
static inline int64_t predis_table_probe(const predis_table *t, uint64_t hi, uint64_t lo, int64_t *free)
{
    uint64_t pos = lo & t->mask;
    int64_t first = -1;
    for (Py_ssize_t i = 0; i < t->capacity; i++) {
        uint8_t seen = t->state[pos];
        if (seen == PREDIS_FULL) {
            if (t->keys[2 * pos + 1] == lo && t->keys[2 * pos] == hi) {
                *free = first;
                return (int64_t)pos;
            }
        } else {
            if (first < 0)
                first = (int64_t)pos;
            if (seen == PREDIS_EMPTY)
                break;
        }
        pos = (pos + 1) & t->mask;
    }
    *free = first;
    return -1;
}

#endif
