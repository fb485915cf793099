/* SPDX-License-Identifier: Apache-2.0 */
/* Keyed BLAKE2b fingerprints (RFC 7693), 16-byte digests, in batches.
 *
 * cache_core/keys.py explains why a keyed PRF and why 128 bits. This is the same function
 * as hashlib.blake2b(data, digest_size=16, key=secret, person=person), computed from a
 * state primed with the key block (keyed BLAKE2b spends one compression on the key, the
 * same for every message), so one short cache key costs one compression. A batch of keys
 * is hashed without the GIL once it is large enough to be worth the switch. */
#include "native.h"
#include <string.h>

#define BLOCK 128
/* Batches at least this long are hashed with the GIL released. */
#define NOGIL_BATCH 256

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t load64(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
#endif
}

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

#define G(a, b, c, d, x, y)                                                                                 \
    do {                                                                                                    \
        v[a] = v[a] + v[b] + (x);                                                                           \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                                     \
        v[c] = v[c] + v[d];                                                                                 \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                                     \
        v[a] = v[a] + v[b] + (y);                                                                           \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                                     \
        v[c] = v[c] + v[d];                                                                                 \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                                     \
    } while (0)

/* Compress one 128-byte block; `t` is the byte count including this block. */
static void compress(uint64_t h[8], const uint8_t block[BLOCK], uint64_t t, int last)
{
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= t; /* messages are far below 2**64 bytes: the high counter word stays 0 */
    if (last)
        v[14] = ~v[14];
    /* Unrolled, every message index is a constant: m stays in registers or at fixed
     * stack offsets instead of being loaded through SIGMA (about 1.5x faster here). */
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

void predis_blake2b_prime(predis_blake2b_primed *state, const uint8_t *key, size_t keylen,
                          const uint8_t *person, size_t personlen)
{
    uint8_t block[BLOCK] = {0};
    uint8_t personal[16] = {0};
    memcpy(state->h, IV, sizeof IV);
    /* Parameter block: digest length 16, key length, fanout 1, depth 1; personalisation. */
    state->h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ 16u;
    if (personlen) /* no personalisation: person may be NULL */
        memcpy(personal, person, personlen);
    state->h[6] ^= load64(personal);
    state->h[7] ^= load64(personal + 8);
    memcpy(block, key, keylen);
    compress(state->h, block, BLOCK, 0);
}

void predis_blake2b_fingerprint(const predis_blake2b_primed *state, const uint8_t *data, size_t len,
                                uint64_t *hi, uint64_t *lo)
{
    uint64_t h[8];
    uint64_t t = BLOCK;
    uint8_t block[BLOCK];
    memcpy(h, state->h, sizeof h);
    while (len > BLOCK) {
        t += BLOCK;
        compress(h, data, t, 0);
        data += BLOCK;
        len -= BLOCK;
    }
    memset(block, 0, BLOCK);
    memcpy(block, data, len);
    t += len;
    compress(h, block, t, 1);
    *hi = h[0];
    *lo = h[1];
}

/* ------------------------------------------------------------- keys side by side */

/* LANES keys of at most one block each are hashed together, one key per lane of a vector
 * (GCC/Clang vector extensions): the same arithmetic as compress(), on every lane at once.
 * Built three times, for AVX-512F, AVX2 and the baseline, and picked at import by what the
 * CPU supports; each lane's digest is exactly the scalar one (tests/unit/test_native_*
 * compare them with hashlib). */
#define LANES 8
typedef uint64_t lanes_t __attribute__((vector_size(8 * LANES)));

#define ROTR_LANES(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define G_LANES(a, b, c, d, x, y)                                                                           \
    do {                                                                                                    \
        v[a] = v[a] + v[b] + (x);                                                                           \
        v[d] = ROTR_LANES(v[d] ^ v[a], 32);                                                                 \
        v[c] = v[c] + v[d];                                                                                 \
        v[b] = ROTR_LANES(v[b] ^ v[c], 24);                                                                 \
        v[a] = v[a] + v[b] + (y);                                                                           \
        v[d] = ROTR_LANES(v[d] ^ v[a], 16);                                                                 \
        v[c] = v[c] + v[d];                                                                                 \
        v[b] = ROTR_LANES(v[b] ^ v[c], 63);                                                                 \
    } while (0)

/* The last (and only) block of each lane's message, words m[16] across lanes, byte counts
 * t: out[0] and out[1] get the digest's two halves per lane. */
static inline __attribute__((always_inline)) void compress_lanes_body(const uint64_t h[8], const lanes_t *m,
                                                                        const lanes_t *t, lanes_t *out)
{
    lanes_t v[16];
    for (int i = 0; i < 8; i++) {
        v[i] = (lanes_t){0} + h[i];
        v[i + 8] = (lanes_t){0} + IV[i];
    }
    v[12] ^= *t;
    v[14] = ~v[14];
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r];
        G_LANES(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G_LANES(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G_LANES(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G_LANES(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G_LANES(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G_LANES(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G_LANES(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G_LANES(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    out[0] = h[0] ^ v[0] ^ v[8];
    out[1] = h[1] ^ v[1] ^ v[9];
}

typedef void (*compress_lanes_fn)(const uint64_t h[8], const lanes_t *m, const lanes_t *t, lanes_t *out);

static void compress_lanes_baseline(const uint64_t h[8], const lanes_t *m, const lanes_t *t, lanes_t *out)
{
    compress_lanes_body(h, m, t, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void compress_lanes_avx2(const uint64_t h[8], const lanes_t *m, const lanes_t *t,
                                                                 lanes_t *out)
{
    compress_lanes_body(h, m, t, out);
}

__attribute__((target("avx512f"))) static void compress_lanes_avx512(const uint64_t h[8], const lanes_t *m,
                                                                      const lanes_t *t, lanes_t *out)
{
    compress_lanes_body(h, m, t, out);
}
#endif

static compress_lanes_fn compress_lanes = compress_lanes_baseline;
static const char *lanes_kind = "baseline";

/* Use the build named `kind` when this CPU runs it: 1, else 0 (nothing changes). */
static int use_compress_lanes(const char *kind)
{
    if (strcmp(kind, "baseline") == 0) {
        compress_lanes = compress_lanes_baseline;
        lanes_kind = "baseline";
        return 1;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (strcmp(kind, "avx2") == 0 && __builtin_cpu_supports("avx2")) {
        compress_lanes = compress_lanes_avx2;
        lanes_kind = "avx2";
        return 1;
    }
    if (strcmp(kind, "avx512f") == 0 && __builtin_cpu_supports("avx512f")) {
        compress_lanes = compress_lanes_avx512;
        lanes_kind = "avx512f";
        return 1;
    }
#endif
    return 0;
}

static void pick_compress_lanes(void)
{
    if (!use_compress_lanes("avx512f") && !use_compress_lanes("avx2"))
        use_compress_lanes("baseline");
}

/* blake2b_lanes(kind=None) -> the build of the side-by-side hashing in use ("avx512f",
 * "avx2" or "baseline"); with a kind this CPU runs, that build is used from now on (the
 * tests compare each with hashlib); ValueError for one it cannot run. */
static PyObject *blake2b_lanes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "blake2b_lanes(kind=None)");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        const char *kind = PyUnicode_AsUTF8(args[0]);
        if (kind == NULL)
            return NULL;
        if (!use_compress_lanes(kind)) {
            PyErr_Format(PyExc_ValueError, "blake2b_lanes: %s is not a build this CPU runs", kind);
            return NULL;
        }
    }
    return PyUnicode_FromString(lanes_kind);
}

static PyMethodDef blake2b_functions[] = {
    {"blake2b_lanes", (PyCFunction)(void (*)(void))blake2b_lanes, METH_FASTCALL,
     "blake2b_lanes(kind=None) -> the build of the side-by-side hashing in use (avx512f, avx2, baseline); a kind "
     "selects it"},
    {NULL, NULL, 0, NULL},
};

void predis_blake2b_fingerprint_many(const predis_blake2b_primed *state, const uint8_t *const *data, const size_t *len,
                                     size_t n, uint64_t *hi, uint64_t *lo)
{
    for (size_t start = 0; start < n; start += LANES) {
        size_t count = n - start < LANES ? n - start : LANES;
        uint64_t words[16][LANES];
        uint64_t counts[LANES];
        int lanes_used = 0;
        memset(words, 0, sizeof words);
        memset(counts, 0, sizeof counts);
        for (size_t l = 0; l < count; l++) {
            size_t k = start + l;
            if (len[k] > BLOCK) {
                predis_blake2b_fingerprint(state, data[k], len[k], &hi[k], &lo[k]);
                continue;
            }
            /* The block is the key zero-padded: whole words straight from the key, the
             * last partial one through a zeroed word. */
            size_t full = len[k] / 8, rest = len[k] % 8;
            for (size_t w = 0; w < full; w++)
                words[w][l] = load64(data[k] + 8 * w);
            if (rest) {
                uint8_t tail[8] = {0};
                memcpy(tail, data[k] + 8 * full, rest);
                words[full][l] = load64(tail);
            }
            counts[l] = BLOCK + len[k];
            lanes_used = 1;
        }
        if (!lanes_used)
            continue;
        lanes_t m[16], t, out[2];
        memcpy(m, words, sizeof m);
        memcpy(&t, counts, sizeof t);
        compress_lanes(state->h, m, &t, out);
        uint64_t halves[2][LANES];
        memcpy(halves, out, sizeof halves);
        for (size_t l = 0; l < count; l++) {
            if (len[start + l] <= BLOCK) {
                hi[start + l] = halves[0][l];
                lo[start + l] = halves[1][l];
            }
        }
    }
}

/* ------------------------------------------------------------------ Python type */

typedef struct {
    PyObject_HEAD
    predis_blake2b_primed state;
} Blake2bObject;

static int Blake2b_init(Blake2bObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"key", "person", NULL};
    Py_buffer key = {0}, person = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|y*", names, &key, &person))
        return -1;
    int ok = key.len >= 1 && key.len <= 64 && person.len <= 16;
    if (ok)
        predis_blake2b_prime(&self->state, key.buf, (size_t)key.len, person.buf, (size_t)(person.buf ? person.len : 0));
    PyBuffer_Release(&key);
    if (person.buf)
        PyBuffer_Release(&person);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "key must be 1..64 bytes and person at most 16 bytes");
        return -1;
    }
    return 0;
}

static PyObject *Blake2b_fingerprint(Blake2bObject *self, PyObject *arg)
{
    uint64_t hi, lo;
    if (PyBytes_CheckExact(arg)) {
        predis_blake2b_fingerprint(&self->state, (const uint8_t *)PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg), &hi, &lo);
    } else {
        Py_buffer view;
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        predis_blake2b_fingerprint(&self->state, view.buf, (size_t)view.len, &hi, &lo);
        PyBuffer_Release(&view);
    }
    PyObject *h = PyLong_FromUnsignedLongLong(hi);
    PyObject *l = h ? PyLong_FromUnsignedLongLong(lo) : NULL;
    if (l == NULL) {
        Py_XDECREF(h);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(h);
        Py_DECREF(l);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, h);
    PyTuple_SET_ITEM(pair, 1, l);
    return pair;
}

/* fingerprints(keys, max_key_bytes) -> bytes of 16*n (hi, lo little-endian per key), or
 * the int index of the first key whose length is outside 1..max_key_bytes (nothing is
 * hashed then). Keys are bytes or any contiguous buffer. */
static PyObject *Blake2b_fingerprints(Blake2bObject *self, PyObject *args)
{
    PyObject *keys;
    Py_ssize_t max_key_bytes;
    if (!PyArg_ParseTuple(args, "On", &keys, &max_key_bytes))
        return NULL;
    /* A tuple holds its own references: nothing can free a key while the GIL is released. */
    PyObject *seq = PySequence_Tuple(keys);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *result = NULL;
    const uint8_t **ptrs = NULL;
    size_t *lens = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t nviews = 0;
    if (n > 0) {
        ptrs = PyMem_Malloc((size_t)n * sizeof *ptrs);
        lens = PyMem_Malloc((size_t)n * sizeof *lens);
        if (ptrs == NULL || lens == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(seq, i);
        if (PyBytes_Check(key)) {
            ptrs[i] = (const uint8_t *)PyBytes_AS_STRING(key);
            lens[i] = (size_t)PyBytes_GET_SIZE(key);
        } else {
            if (views == NULL) {
                views = PyMem_Calloc((size_t)n, sizeof *views);
                if (views == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
            if (PyObject_GetBuffer(key, &views[nviews], PyBUF_SIMPLE) < 0)
                goto done;
            ptrs[i] = views[nviews].buf;
            lens[i] = (size_t)views[nviews].len;
            nviews++;
        }
        if (lens[i] < 1 || lens[i] > (size_t)max_key_bytes) {
            result = PyLong_FromSsize_t(i);
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, n * 16);
    if (result == NULL)
        goto done;
    {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        /* Only immutable bytes may be read without the GIL (a bytearray could be resized). */
        int release = n >= NOGIL_BATCH && nviews == 0;
        PyThreadState *saved = release ? PyEval_SaveThread() : NULL;
        for (Py_ssize_t start = 0; start < n; start += LANES) {
            size_t count = (size_t)(n - start < LANES ? n - start : LANES);
            uint64_t hi[LANES], lo[LANES];
            predis_blake2b_fingerprint_many(&self->state, ptrs + start, lens + start, count, hi, lo);
            for (size_t l = 0; l < count; l++) {
                for (int b = 0; b < 8; b++) {
                    out[16 * (start + l) + b] = (uint8_t)(hi[l] >> (8 * b));
                    out[16 * (start + l) + 8 + b] = (uint8_t)(lo[l] >> (8 * b));
                }
            }
        }
        if (release)
            PyEval_RestoreThread(saved);
    }
done:
    for (Py_ssize_t i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(ptrs);
    PyMem_Free(lens);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef Blake2b_methods[] = {
    {"fingerprint", (PyCFunction)Blake2b_fingerprint, METH_O,
     "fingerprint(key) -> (hi, lo): the 16-byte keyed digest of one key as two integers."},
    {"fingerprints", (PyCFunction)Blake2b_fingerprints, METH_VARARGS,
     "fingerprints(keys, max_key_bytes) -> bytes of 16 per key, or the index of the first "
     "key whose length is outside 1..max_key_bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Blake2bType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.Blake2b",
    .tp_doc = "Blake2b(key, person=b''): keyed BLAKE2b with 16-byte digests, primed with its key.",
    .tp_basicsize = sizeof(Blake2bObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Blake2b_init,
    .tp_methods = Blake2b_methods,
};

const predis_blake2b_primed *predis_as_blake2b(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &Blake2bType)) {
        PyErr_SetString(PyExc_TypeError, "expected a cache_core._native.Blake2b");
        return NULL;
    }
    return &((Blake2bObject *)obj)->state;
}


int predis_blake2b_init(PyObject *module)
{
    pick_compress_lanes();
    if (PyModule_AddFunctions(module, blake2b_functions) < 0)
        return -1;
    if (PyType_Ready(&Blake2bType) < 0)
        return -1;
    Py_INCREF(&Blake2bType);
    if (PyModule_AddObject(module, "Blake2b", (PyObject *)&Blake2bType) < 0) {
        Py_DECREF(&Blake2bType);
        return -1;
    }
    return 0;
}
