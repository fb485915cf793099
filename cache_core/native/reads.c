/* SPDX-License-Identifier: Apache-2.0 */
/* The cache's string reads and same-size overwrites on host memory
 * (cache_core._native.Entries).
 *
 * Cache._mget_small did, per key, a fingerprint, a probe, a dozen NumPy scalar reads and
 * stores and a slice-and-tobytes of the value, each a Python call. An Entries object holds
 * the buffers of the cache's per-entry arrays and does the same steps for a whole batch
 * in one call:
 *
 * - read: fingerprint each key (keyed BLAKE2b, the Fingerprinter's primed state), probe
 *   the table, check the entry's expiry and type, copy the value out of its slab page
 *   into a bytes object, stamp the entry's access time and the CLOCK reference bit, and
 *   clear the prefetched flags of the entries read (counting each once);
 * - overwrite: write a batch of values over existing keys whose size class does not
 *   change, in place.
 *
 * Both look before they write: when any key of the batch needs the general path (a key of
 * a bad length, an expired entry to remove, an absent key to insert, a value that changes
 * size class) nothing is changed and None is returned, and the caller runs the Python
 * path, which is the oracle of tests/unit/test_native_reads.py. The caller holds the
 * cache's lock. */
#include "native.h"
#include <string.h>
#include <time.h>

#define ENTRY_ARRAYS 6
#define SMALL_KEYS 64
#define RES_HIT 0
#define RES_MISS 1
#define RES_PREFETCH_HIT 2
#define HANDLE_CHUNK_BITS 24
#define HANDLE_PAGE_BITS 24
#define HANDLE_MASK ((1LL << 24) - 1)

/* e_handle int64, e_len int64, e_expire int64, e_atime int64, e_prefetched bool, e_type uint8 */
static const Py_ssize_t ENTRY_ITEMSIZE[ENTRY_ARRAYS] = {8, 8, 8, 8, 1, 1};

typedef struct {
    PyObject_HEAD
    Py_buffer buf[ENTRY_ARRAYS];
    int held;
    Py_ssize_t count;
    int64_t *handle, *len, *expire, *atime;
    uint8_t *prefetched, *type;
    /* The cache's objects that live as long as these arrays (Entries.bind; lone() needs them) */
    PyObject *hasher, *max_key_bytes, *store, *lock, *stats;
} Entries;

static void entries_release(Entries *self)
{
    for (int i = 0; i < self->held; i++)
        PyBuffer_Release(&self->buf[i]);
    self->held = 0;
    self->count = 0;
}

static int Entries_init(Entries *self, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args) != ENTRY_ARRAYS) {
        PyErr_SetString(PyExc_TypeError, "Entries(e_handle, e_len, e_expire, e_atime, e_prefetched, e_type)");
        return -1;
    }
    entries_release(self);
    Py_ssize_t count = -1;
    for (int i = 0; i < ENTRY_ARRAYS; i++) {
        Py_buffer *b = &self->buf[i];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, i), b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            entries_release(self);
            return -1;
        }
        self->held = i + 1;
        Py_ssize_t n = b->len / ENTRY_ITEMSIZE[i];
        if (b->len % ENTRY_ITEMSIZE[i] || (count >= 0 && n != count) || n < 1) {
            entries_release(self);
            PyErr_SetString(PyExc_ValueError,
                            "Entries: six writable C-contiguous arrays of one length (int64 handle, length, expiry "
                            "and access time, bool prefetched, uint8 type)");
            return -1;
        }
        count = n;
    }
    self->handle = (int64_t *)self->buf[0].buf;
    self->len = (int64_t *)self->buf[1].buf;
    self->expire = (int64_t *)self->buf[2].buf;
    self->atime = (int64_t *)self->buf[3].buf;
    self->prefetched = (uint8_t *)self->buf[4].buf;
    self->type = (uint8_t *)self->buf[5].buf;
    self->count = count;
    return 0;
}

static void Entries_dealloc(Entries *self)
{
    Py_CLEAR(self->hasher);
    Py_CLEAR(self->max_key_bytes);
    Py_CLEAR(self->store);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->stats);
    entries_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The value store's layout: per size class, its chunk size and list of pages. */
typedef struct {
    PyObject *pages;   /* list (per class) of lists (per page) of uint8 arrays or None */
    const int64_t *sizes;
    Py_ssize_t classes;
    Py_buffer sizes_buf;
} Slabs;

static int slabs_open(Slabs *s, PyObject *pages, PyObject *sizes)
{
    if (!PyList_Check(pages)) {
        PyErr_SetString(PyExc_TypeError, "pages must be a list of lists");
        return -1;
    }
    if (PyObject_GetBuffer(sizes, &s->sizes_buf, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (s->sizes_buf.len % 8 || s->sizes_buf.len / 8 != PyList_GET_SIZE(pages)) {
        PyBuffer_Release(&s->sizes_buf);
        PyErr_SetString(PyExc_ValueError, "sizes must be int64, one per class of pages");
        return -1;
    }
    s->pages = pages;
    s->sizes = (const int64_t *)s->sizes_buf.buf;
    s->classes = PyList_GET_SIZE(pages);
    return 0;
}

/* The bytes of the chunk behind `handle`, `len` of them (or of `cap`, its size): the page's
 * buffer is opened into *view (release it after use). */
static uint8_t *slab_chunk(Slabs *s, int64_t handle, int64_t len, Py_buffer *view, int writable)
{
    int64_t cid = handle >> (HANDLE_CHUNK_BITS + HANDLE_PAGE_BITS);
    int64_t page = (handle >> HANDLE_CHUNK_BITS) & HANDLE_MASK;
    int64_t chunk = handle & HANDLE_MASK;
    if (cid < 0 || cid >= s->classes) {
        PyErr_SetString(PyExc_ValueError, "a value handle names no size class");
        return NULL;
    }
    PyObject *pages = PyList_GET_ITEM(s->pages, cid);
    if (!PyList_Check(pages) || page >= PyList_GET_SIZE(pages)) {
        PyErr_SetString(PyExc_ValueError, "a value handle names no page");
        return NULL;
    }
    int64_t size = s->sizes[cid];
    if (len > size) {
        PyErr_SetString(PyExc_ValueError, "a value is longer than its chunk");
        return NULL;
    }
    if (PyObject_GetBuffer(PyList_GET_ITEM(pages, page), view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if ((chunk + 1) * size > view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "a value handle points past its page");
        return NULL;
    }
    return (uint8_t *)view->buf + chunk * size;
}

typedef struct {
    uint64_t hi, lo;
    int64_t eid;
} Found;

/* Keys of a batch are looked up in stages over blocks of PREFETCH_BLOCK keys: fingerprint
 * each and prefetch its table slot, then probe each and prefetch its entry's fields. The
 * table, the entry arrays and the slabs are far larger than the caches, so each key costs
 * several memory round trips; in stages those of a block overlap instead of queueing. */
#define PREFETCH_BLOCK 16
/* A batch of more than one block also fetches, block by block as it copies values, the
 * access log ring's slots its events will take when they are logged after the batch, for
 * its last RING_WARM_EVENTS events (24 bytes each: their slots stay in the core's caches
 * until the log; those of earlier events would be evicted again). Measured on a
 * 1,000-key MGET, the log's write went from ~3.5 to ~1.2 ns per event (bench/RESULTS.md). */
#define RING_WARM_EVENTS 4096
#define WARM_RING(ring, n, start, end) \
    do { \
        if ((n) > PREFETCH_BLOCK && (end) + RING_WARM_EVENTS > (n)) \
            predis_ring_prefetch((ring), (start), (end) - (start)); \
    } while (0)
#define PREFETCH(addr) __builtin_prefetch((const void *)(addr), 0, 3)

/* Fingerprint and probe each key of `keys` (a list of bytes): found[j] gets its
 * fingerprint and entry (-1 when absent). Returns 1 when every key was looked up, 0 when
 * one needs the general path (bad length, not bytes, expired entry, or with `present` an
 * absent key), -1 on error. */
static int find_all(PyObject *keys, const predis_blake2b_primed *hasher, const predis_ctable *table, Entries *e,
                    Py_ssize_t max_key_bytes, int64_t now, Found *found, int present)
{
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t start = 0; start < n; start += PREFETCH_BLOCK) {
        Py_ssize_t end = start + PREFETCH_BLOCK < n ? start + PREFETCH_BLOCK : n;
        const uint8_t *data[PREFETCH_BLOCK];
        size_t lens[PREFETCH_BLOCK];
        uint64_t his[PREFETCH_BLOCK], los[PREFETCH_BLOCK];
        for (Py_ssize_t j = start; j < end; j++) {
            PyObject *key = PyList_GET_ITEM(keys, j);
            if (!PyBytes_CheckExact(key))
                return 0;
            Py_ssize_t klen = PyBytes_GET_SIZE(key);
            if (klen < 1 || klen > max_key_bytes)
                return 0;
            data[j - start] = (const uint8_t *)PyBytes_AS_STRING(key);
            lens[j - start] = (size_t)klen;
        }
        if (end - start == 1)
            predis_blake2b_fingerprint(hasher, data[0], lens[0], &his[0], &los[0]);
        else
            predis_blake2b_fingerprint_many(hasher, data, lens, (size_t)(end - start), his, los);
        for (Py_ssize_t j = start; j < end; j++) {
            found[j].hi = his[j - start];
            found[j].lo = los[j - start];
            PREFETCH(&table->slots[found[j].lo & table->mask]);
        }
        for (Py_ssize_t j = start; j < end; j++) {
            /* The entry the home slot's tag points at, whose fingerprint confirms it. */
            uint64_t home = table->slots[found[j].lo & table->mask];
            uint32_t id = (uint32_t)home;
            if (id >= PREDIS_ID_BASE && (uint32_t)(home >> 32) == (uint32_t)(found[j].hi >> 32)) {
                PREFETCH(&table->e_hi[id - PREDIS_ID_BASE]);
                PREFETCH(&table->e_lo[id - PREDIS_ID_BASE]);
            }
        }
        for (Py_ssize_t j = start; j < end; j++) {
            int64_t free;
            int64_t slot = predis_ctable_probe(table, found[j].hi, found[j].lo, &free);
            int64_t eid = slot < 0 ? -1 : (int64_t)((uint32_t)table->slots[slot] - PREDIS_ID_BASE);
            if (eid >= e->count) {
                PyErr_SetString(PyExc_ValueError, "the table names an entry past the entry arrays");
                return -1;
            }
            if (eid >= 0) {
                PREFETCH(&e->expire[eid]);
                PREFETCH(&e->handle[eid]);
                PREFETCH(&e->len[eid]);
                PREFETCH(&e->atime[eid]);
                PREFETCH(&e->prefetched[eid]);
                PREFETCH(&e->type[eid]);
            }
            found[j].eid = eid;
        }
        for (Py_ssize_t j = start; j < end; j++) {
            int64_t eid = found[j].eid;
            if (eid >= 0 && e->expire[eid] != 0 && e->expire[eid] <= now)
                return 0;
            if (present && eid < 0)
                return 0; /* an overwrite of a key that is not there: the general path, at once */
        }
    }
    return 1;
}

/* The value chunks of a block of found entries, opened (and prefetched) before they are
 * copied, so that their cache misses overlap. */
typedef struct {
    Py_buffer pages[PREFETCH_BLOCK];
    const uint8_t *chunks[PREFETCH_BLOCK]; /* NULL: a miss, a key that is not a string, an empty value */
} ChunkBlock;

static void close_chunks(ChunkBlock *b)
{
    for (Py_ssize_t i = 0; i < PREFETCH_BLOCK; i++)
        if (b->chunks[i] != NULL)
            PyBuffer_Release(&b->pages[i]);
}

/* Open the chunks of found[start..end) (at most PREFETCH_BLOCK) into *b; -1 with an
 * exception and nothing held. */
static int open_chunks(Entries *self, Slabs *slabs, const Found *found, Py_ssize_t start, Py_ssize_t end, int typed,
                       ChunkBlock *b)
{
    for (Py_ssize_t i = 0; i < PREFETCH_BLOCK; i++)
        b->chunks[i] = NULL;
    for (Py_ssize_t j = start; j < end; j++) {
        int64_t eid = found[j].eid;
        if (eid < 0 || (typed && self->type[eid]) || self->len[eid] == 0)
            continue;
        const uint8_t *chunk = slab_chunk(slabs, self->handle[eid], self->len[eid], &b->pages[j - start], 0);
        if (chunk == NULL) {
            close_chunks(b);
            return -1;
        }
        b->chunks[j - start] = chunk;
        PREFETCH(chunk);
    }
    return 0;
}

static int entries_ready(Entries *self)
{
    if (self->count < 1) {
        PyErr_SetString(PyExc_ValueError, "Entries is not initialised");
        return 0;
    }
    return 1;
}

/* The CLOCK reference bits `obj` names (None: no policy bits to set, *ref stays NULL):
 * opened into *view, *held set when it must be released; -1 with an exception. */
static int open_ref(const Entries *self, PyObject *obj, Py_buffer *view, int *held, uint8_t **ref)
{
    if (obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    *held = 1;
    if (view->len < self->count) {
        PyErr_SetString(PyExc_ValueError, "ref must have one byte per entry");
        return -1;
    }
    *ref = (uint8_t *)view->buf;
    return 0;
}

/* After a read of found[0..m): stamp each hit's access time and CLOCK bit (`ref` may be
 * NULL), clear the prefetched flags (each entry counted once: the count is returned) and
 * list the hits' entry IDs into eid_out. Nothing here can fail. */
static long long stamp_reads(Entries *self, const Found *found, Py_ssize_t m, int64_t now, uint8_t *ref,
                             int any_prefetched, int64_t *eid_out)
{
    Py_ssize_t h = 0;
    long long used = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        int64_t eid = found[j].eid;
        if (eid < 0)
            continue;
        eid_out[h++] = eid;
        self->atime[eid] = now;
        if (ref != NULL)
            ref[eid] = 1;
    }
    if (any_prefetched) {
        for (Py_ssize_t j = 0; j < m; j++) {
            int64_t eid = found[j].eid;
            if (eid >= 0 && self->prefetched[eid]) {
                self->prefetched[eid] = 0; /* read once: counted once however often it was named */
                used++;
            }
        }
    }
    return used;
}

/* Log m reads into the access log ring `ring` (None: not logged) as events of code `op`. */
static int log_reads(PyObject *ring, PyObject *op_obj, const uint64_t *lo, const uint8_t *res, const int64_t *sizes,
                     Py_ssize_t m)
{
    if (ring == Py_None)
        return 0;
    long op = PyLong_AsLong(op_obj);
    if (op == -1 && PyErr_Occurred())
        return -1;
    return predis_ring_log(ring, (uint8_t)op, lo, res, sizes, m);
}

/* read(hasher, table, keys, max_key_bytes, now, max_bytes, typed, wrong_type, pages, sizes, ref, ring, op)
 *   -> None | (values, hits, prefetch_used, lo, results, sizes, hit_eids)
 * values: the first m keys' values (bytes, None for a miss, wrong_type for a key that is
 * not a string when `typed`); m < len(keys) only when max_bytes > 0 cut the batch (the
 * keys whose values add up to at most max_bytes, at least one). lo (uint64), results
 * (uint8), sizes (int64) per key read and hit_eids (int64) as bytes. `ref` (a uint8 array
 * or None): the CLOCK policy's reference bits, set for every hit. `ring` (an EventColumns or
 * None): the access log ring the reads are logged into, as events of code `op`. */
static PyObject *Entries_read(Entries *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "read(hasher, table, keys, max_key_bytes, now, max_bytes, typed, wrong_type, pages, sizes, ref, ring, op)");
        return NULL;
    }
    if (!entries_ready(self))
        return NULL;
    const predis_blake2b_primed *hasher = predis_as_blake2b(args[0]);
    const predis_ctable *table = hasher ? predis_as_ctable(args[1]) : NULL;
    if (table == NULL)
        return NULL;
    PyObject *keys = args[2];
    if (!PyList_Check(keys)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a list");
        return NULL;
    }
    Py_ssize_t max_key_bytes = PyLong_AsSsize_t(args[3]);
    long long now = PyLong_AsLongLong(args[4]);
    long long max_bytes = PyLong_AsLongLong(args[5]);
    int typed = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred() || typed < 0)
        return NULL;
    PyObject *wrong_type = args[7];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Found small[SMALL_KEYS];
    Found *found = n <= SMALL_KEYS ? small : PyMem_Malloc(sizeof(Found) * (size_t)n);
    if (found == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL, *values = NULL, *lo = NULL, *res = NULL, *sz = NULL, *eids = NULL;
    Py_buffer ref_buf = {0};
    int have_ref = 0;
    Slabs slabs = {0};
    int have_slabs = 0;
    int ok = find_all(keys, hasher, table, self, max_key_bytes, (int64_t)now, found, 0);
    if (ok <= 0) {
        if (ok == 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    if (slabs_open(&slabs, args[8], args[9]) < 0)
        goto done;
    have_slabs = 1;
    uint8_t *ref = NULL;
    if (open_ref(self, args[10], &ref_buf, &have_ref, &ref) < 0)
        goto done;
    /* How many keys this batch serves: all, or those within max_bytes (at least one). */
    Py_ssize_t m = n;
    if (max_bytes > 0) {
        long long total = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            total += found[j].eid >= 0 ? self->len[found[j].eid] : 0;
            if (total > max_bytes && j) {
                m = j;
                break;
            }
        }
    }
    values = PyList_New(m);
    lo = PyBytes_FromStringAndSize(NULL, m * 8);
    res = PyBytes_FromStringAndSize(NULL, m);
    sz = PyBytes_FromStringAndSize(NULL, m * 8);
    if (values == NULL || lo == NULL || res == NULL || sz == NULL)
        goto done;
    uint64_t *lo_out = (uint64_t *)PyBytes_AS_STRING(lo);
    uint8_t *res_out = (uint8_t *)PyBytes_AS_STRING(res);
    int64_t *sz_out = (int64_t *)PyBytes_AS_STRING(sz);
    Py_ssize_t hits = 0;
    int any_prefetched = 0;
    for (Py_ssize_t start = 0; start < m; start += PREFETCH_BLOCK) {
        Py_ssize_t end = start + PREFETCH_BLOCK < m ? start + PREFETCH_BLOCK : m;
        /* The block's chunks first (prefetched), then their copies. */
        ChunkBlock block;
        WARM_RING(args[11], m, start, end);
        if (open_chunks(self, &slabs, found, start, end, typed, &block) < 0)
            goto done;
        const uint8_t *const *chunks = block.chunks;
        int failed = 0;
        for (Py_ssize_t j = start; j < end && !failed; j++) {
            int64_t eid = found[j].eid;
            lo_out[j] = found[j].lo;
            PyObject *value;
            if (eid < 0) {
                value = Py_NewRef(Py_None);
                res_out[j] = RES_MISS;
                sz_out[j] = 0;
            } else {
                int64_t len = self->len[eid];
                if (typed && self->type[eid]) {
                    value = Py_NewRef(wrong_type);
                } else {
                    value = PyBytes_FromStringAndSize(NULL, len);
                    if (value == NULL) {
                        failed = 1;
                        break;
                    }
                    if (len)
                        memcpy(PyBytes_AS_STRING(value), chunks[j - start], (size_t)len);
                }
                res_out[j] = self->prefetched[eid] ? RES_PREFETCH_HIT : RES_HIT;
                any_prefetched |= self->prefetched[eid];
                sz_out[j] = len;
                hits++;
            }
            PyList_SET_ITEM(values, j, value);
        }
        close_chunks(&block);
        if (failed)
            goto done;
    }
    eids = PyBytes_FromStringAndSize(NULL, hits * 8);
    if (eids == NULL)
        goto done;
    long long used = stamp_reads(self, found, m, (int64_t)now, ref, any_prefetched, (int64_t *)PyBytes_AS_STRING(eids));
    if (log_reads(args[11], args[12], lo_out, res_out, sz_out, m) < 0)
        goto done;
    result = Py_BuildValue("(OnLOOOO)", values, hits, used, lo, res, sz, eids);
done:
    if (found != small)
        PyMem_Free(found);
    if (have_ref)
        PyBuffer_Release(&ref_buf);
    if (have_slabs)
        PyBuffer_Release(&slabs.sizes_buf);
    Py_XDECREF(values);
    Py_XDECREF(lo);
    Py_XDECREF(res);
    Py_XDECREF(sz);
    Py_XDECREF(eids);
    return result;
}

/* Decimal digits of n >= 0. */
static inline int digits(Py_ssize_t n)
{
    int d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

static char *put_number(char *out, Py_ssize_t n)
{
    int d = digits(n);
    for (int i = d - 1; i >= 0; i--) {
        out[i] = (char)('0' + n % 10);
        n /= 10;
    }
    return out + d;
}

/* read_reply(hasher, table, keys, max_key_bytes, now, typed, null, other, header, pages, sizes, ref, ring, op)
 *   -> None | (reply, hits, prefetch_used, results, hit_eids)
 * read() for a server: the same lookups, checks, stamps and log events, but the values go
 * straight into their RESP replies, one bytes object for the batch (a run of GETs, or with
 * `header` one MGET's array): a hit as a bulk string, a miss as `null`, a key that is not a
 * string (when `typed`) as `other`. results (uint8 per key) and hit_eids (int64) as bytes.
 * None, with nothing changed, when a key needs the general path. */
static PyObject *Entries_read_reply(Entries *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "read_reply(hasher, table, keys, max_key_bytes, now, typed, null, other, header, pages, sizes, ref, ring, op)");
        return NULL;
    }
    if (!entries_ready(self))
        return NULL;
    const predis_blake2b_primed *hasher = predis_as_blake2b(args[0]);
    const predis_ctable *table = hasher ? predis_as_ctable(args[1]) : NULL;
    if (table == NULL)
        return NULL;
    PyObject *keys = args[2], *null = args[6], *other = args[7];
    if (!PyList_Check(keys) || !PyBytes_Check(null) || !PyBytes_Check(other)) {
        PyErr_SetString(PyExc_TypeError, "read_reply: keys must be a list, null and other bytes");
        return NULL;
    }
    Py_ssize_t max_key_bytes = PyLong_AsSsize_t(args[3]);
    long long now = PyLong_AsLongLong(args[4]);
    int typed = PyObject_IsTrue(args[5]);
    int header = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred() || typed < 0 || header < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    /* found, then per key its fingerprint's low half, result code and size (the log's
     * columns), in one allocation for a large batch */
    Found small[SMALL_KEYS];
    uint64_t lo_small[SMALL_KEYS];
    int64_t sz_small[SMALL_KEYS];
    Found *found = small;
    uint64_t *lo_out = lo_small;
    int64_t *sz_out = sz_small;
    void *scratch = NULL;
    if (n > SMALL_KEYS) {
        scratch = PyMem_Malloc((sizeof(Found) + 16) * (size_t)n);
        if (scratch == NULL)
            return PyErr_NoMemory();
        found = (Found *)scratch;
        lo_out = (uint64_t *)(found + n);
        sz_out = (int64_t *)(lo_out + n);
    }
    PyObject *result = NULL, *reply = NULL, *res = NULL, *eids = NULL;
    Py_buffer ref_buf = {0};
    int have_ref = 0, have_slabs = 0;
    Slabs slabs = {0};
    int ok = find_all(keys, hasher, table, self, max_key_bytes, (int64_t)now, found, 0);
    if (ok <= 0) {
        if (ok == 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    if (slabs_open(&slabs, args[9], args[10]) < 0)
        goto done;
    have_slabs = 1;
    uint8_t *ref = NULL;
    if (open_ref(self, args[11], &ref_buf, &have_ref, &ref) < 0)
        goto done;
    Py_ssize_t total = header ? 3 + digits(n) : 0, hits = 0;
    Py_ssize_t null_len = PyBytes_GET_SIZE(null), other_len = PyBytes_GET_SIZE(other);
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t eid = found[j].eid;
        Py_ssize_t len = eid < 0 ? null_len : typed && self->type[eid] ? other_len : 5 + digits(self->len[eid]) + self->len[eid];
        if (len > PY_SSIZE_T_MAX - total) {
            PyErr_NoMemory();
            goto done;
        }
        total += len;
    }
    reply = PyBytes_FromStringAndSize(NULL, total);
    res = PyBytes_FromStringAndSize(NULL, n);
    if (reply == NULL || res == NULL)
        goto done;
    char *p = PyBytes_AS_STRING(reply);
    uint8_t *res_out = (uint8_t *)PyBytes_AS_STRING(res);
    if (header) {
        *p++ = '*';
        p = put_number(p, n);
        *p++ = '\r';
        *p++ = '\n';
    }
    int any_prefetched = 0;
    for (Py_ssize_t start = 0; start < n; start += PREFETCH_BLOCK) {
        Py_ssize_t end = start + PREFETCH_BLOCK < n ? start + PREFETCH_BLOCK : n;
        /* The block's chunks first (prefetched), then their copies. */
        ChunkBlock block;
        WARM_RING(args[12], n, start, end);
        if (open_chunks(self, &slabs, found, start, end, typed, &block) < 0)
            goto done;
        const uint8_t *const *chunks = block.chunks;
        for (Py_ssize_t j = start; j < end; j++) {
            int64_t eid = found[j].eid;
            lo_out[j] = found[j].lo;
            if (eid < 0) {
                memcpy(p, PyBytes_AS_STRING(null), (size_t)null_len);
                p += null_len;
                res_out[j] = RES_MISS;
                sz_out[j] = 0;
                continue;
            }
            int64_t len = self->len[eid];
            if (typed && self->type[eid]) {
                memcpy(p, PyBytes_AS_STRING(other), (size_t)other_len);
                p += other_len;
            } else {
                *p++ = '$';
                p = put_number(p, len);
                *p++ = '\r';
                *p++ = '\n';
                if (len)
                    memcpy(p, chunks[j - start], (size_t)len);
                p += len;
                *p++ = '\r';
                *p++ = '\n';
            }
            res_out[j] = self->prefetched[eid] ? RES_PREFETCH_HIT : RES_HIT;
            any_prefetched |= self->prefetched[eid];
            sz_out[j] = len;
            hits++;
        }
        close_chunks(&block);
    }
    eids = PyBytes_FromStringAndSize(NULL, hits * 8);
    if (eids == NULL)
        goto done;
    long long used = stamp_reads(self, found, n, (int64_t)now, ref, any_prefetched, (int64_t *)PyBytes_AS_STRING(eids));
    if (log_reads(args[12], args[13], lo_out, res_out, sz_out, n) < 0)
        goto done;
    result = Py_BuildValue("(OnLOO)", reply, hits, used, res, eids);
done:
    PyMem_Free(scratch);
    if (have_ref)
        PyBuffer_Release(&ref_buf);
    if (have_slabs)
        PyBuffer_Release(&slabs.sizes_buf);
    Py_XDECREF(reply);
    Py_XDECREF(res);
    Py_XDECREF(eids);
    return result;
}

/* The size class of a value of `len` bytes: the first whose chunk holds it. */
static Py_ssize_t class_of(const Slabs *s, int64_t len)
{
    Py_ssize_t lo = 0, hi = s->classes;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (s->sizes[mid] < len)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Prefetch, for writing, the chunks the values start..end of an overwrite go to. */
static int prefetch_chunks(Entries *self, Slabs *slabs, const Found *found, PyObject *values, Py_ssize_t start,
                           Py_ssize_t end)
{
    for (Py_ssize_t j = start; j < end; j++) {
        int64_t len = PyBytes_GET_SIZE(PyList_GET_ITEM(values, j));
        if (!len)
            continue;
        Py_buffer page;
        const uint8_t *chunk = slab_chunk(slabs, self->handle[found[j].eid], len, &page, 0);
        if (chunk == NULL)
            return -1;
        __builtin_prefetch(chunk, 1, 3);
        PyBuffer_Release(&page);
    }
    return 0;
}

/* overwrite(hasher, table, keys, values, max_key_bytes, now, expire, keep_ttl, pages, sizes, ref, ring, op, result)
 *   -> None | (used_bytes_delta, prefetch_wasted, lo, eids)
 * SET of distinct existing string keys whose values keep their size class: each value is
 * written over its chunk, the entry's length, access time and (unless keep_ttl) expiry
 * (`expire`, 0 for none) updated, a prefetched flag cleared (counted: overwritten before
 * it was read) and the CLOCK bit set when `ref` is given. lo (uint64) and eids (int64)
 * per key as bytes. None, with nothing changed, when any key needs the general path. `ring`
 * (an EventColumns or None): the access log ring the writes are logged into, as events of
 * code `op` with result code `result` and the values' lengths. */
static PyObject *Entries_overwrite(Entries *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "overwrite(hasher, table, keys, values, max_key_bytes, now, expire, keep_ttl, pages, sizes, ref, ring, op, result)");
        return NULL;
    }
    if (!entries_ready(self))
        return NULL;
    const predis_blake2b_primed *hasher = predis_as_blake2b(args[0]);
    const predis_ctable *table = hasher ? predis_as_ctable(args[1]) : NULL;
    if (table == NULL)
        return NULL;
    PyObject *keys = args[2], *values = args[3];
    if (!PyList_Check(keys) || !PyList_Check(values) || PyList_GET_SIZE(keys) != PyList_GET_SIZE(values)) {
        PyErr_SetString(PyExc_TypeError, "keys and values must be lists of one length");
        return NULL;
    }
    Py_ssize_t max_key_bytes = PyLong_AsSsize_t(args[4]);
    long long now = PyLong_AsLongLong(args[5]);
    long long expire = PyLong_AsLongLong(args[6]);
    int keep_ttl = PyObject_IsTrue(args[7]);
    if (PyErr_Occurred() || keep_ttl < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Found small[SMALL_KEYS];
    Found *found = n <= SMALL_KEYS ? small : PyMem_Malloc(sizeof(Found) * (size_t)n);
    if (found == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL, *lo = NULL, *eids = NULL;
    Py_buffer ref_buf = {0};
    int have_ref = 0, have_slabs = 0;
    Slabs slabs = {0};
    int ok = find_all(keys, hasher, table, self, max_key_bytes, (int64_t)now, found, 1);
    if (ok <= 0) {
        if (ok == 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    if (slabs_open(&slabs, args[8], args[9]) < 0)
        goto done;
    have_slabs = 1;
    uint8_t *ref = NULL;
    if (open_ref(self, args[10], &ref_buf, &have_ref, &ref) < 0)
        goto done;
    /* Look first: every key present, a string, its value bytes and of its size class. */
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t eid = found[j].eid;
        PyObject *value = PyList_GET_ITEM(values, j);
        if (eid < 0 || self->type[eid] || !PyBytes_CheckExact(value) ||
            class_of(&slabs, PyBytes_GET_SIZE(value)) != self->handle[eid] >> (HANDLE_CHUNK_BITS + HANDLE_PAGE_BITS)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    lo = PyBytes_FromStringAndSize(NULL, n * 8);
    eids = PyBytes_FromStringAndSize(NULL, n * 8);
    if (lo == NULL || eids == NULL)
        goto done;
    uint64_t *lo_out = (uint64_t *)PyBytes_AS_STRING(lo);
    int64_t *eid_out = (int64_t *)PyBytes_AS_STRING(eids);
    long long used = 0, wasted = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t eid = found[j].eid;
        PyObject *value = PyList_GET_ITEM(values, j);
        int64_t len = PyBytes_GET_SIZE(value);
        if (j % PREFETCH_BLOCK == 0) {
            /* The next block's chunks are fetched for writing while this one is written. */
            Py_ssize_t end = j + PREFETCH_BLOCK < n ? j + PREFETCH_BLOCK : n;
            if (prefetch_chunks(self, &slabs, found, values, j, end) < 0)
                goto done;
            WARM_RING(args[11], n, j, end);
        }
        if (len) {
            Py_buffer page;
            uint8_t *chunk = slab_chunk(&slabs, self->handle[eid], len, &page, 1);
            if (chunk == NULL)
                goto done; /* a corrupt handle: the keys before it are written, as a failing Python write would leave them */
            memcpy(chunk, PyBytes_AS_STRING(value), (size_t)len);
            PyBuffer_Release(&page);
        }
        used += len - self->len[eid];
        self->len[eid] = len;
        self->atime[eid] = now;
        if (self->prefetched[eid]) {
            self->prefetched[eid] = 0;
            wasted++;
        }
        if (!keep_ttl)
            self->expire[eid] = expire;
        if (ref != NULL)
            ref[eid] = 1;
        lo_out[j] = found[j].lo;
        eid_out[j] = eid;
    }
    if (args[11] != Py_None) {
        long op = PyLong_AsLong(args[12]), code = PyLong_AsLong(args[13]);
        if (PyErr_Occurred())
            goto done;
        uint8_t codes_small[SMALL_KEYS];
        int64_t sizes_small[SMALL_KEYS];
        uint8_t *codes = n <= SMALL_KEYS ? codes_small : PyMem_Malloc((size_t)n);
        int64_t *lengths = n <= SMALL_KEYS ? sizes_small : PyMem_Malloc(sizeof(int64_t) * (size_t)n);
        int logged = codes != NULL && lengths != NULL;
        if (logged) {
            for (Py_ssize_t j = 0; j < n; j++) {
                codes[j] = (uint8_t)code;
                lengths[j] = PyBytes_GET_SIZE(PyList_GET_ITEM(values, j));
            }
            logged = predis_ring_log(args[11], (uint8_t)op, lo_out, codes, lengths, n) == 0;
        } else {
            PyErr_NoMemory();
        }
        if (codes != codes_small)
            PyMem_Free(codes);
        if (lengths != sizes_small)
            PyMem_Free(lengths);
        if (!logged)
            goto done;
    }
    result = Py_BuildValue("(LLOO)", used, wasted, lo, eids);
done:
    if (found != small)
        PyMem_Free(found);
    if (have_ref)
        PyBuffer_Release(&ref_buf);
    if (have_slabs)
        PyBuffer_Release(&slabs.sizes_buf);
    Py_XDECREF(lo);
    Py_XDECREF(eids);
    return result;
}

/* ------------------------------------------------------------- one request, one call */

/* Set once by serving_setup: the cache's null access hook and its CLOCK policy class. */
static PyObject *null_hook = NULL, *clock_policy = NULL, *monotonic_clock = NULL;

/* Attribute and method names lone() uses, interned once by serving_setup. */
enum {
    N_ACCESS_HOOK,
    N_HOOK_RING,
    N_NOTE_ENCODING,
    N_VIEW,
    N_ACQUIRE,
    N_CHUNK_BYTES,
    N_CHUNK_SIZES,
    N_CLOCK,
    N_ENCODINGS,
    N_HITS,
    N_LARGEST_VALUE_BYTES,
    N_LIVE_KEYS,
    N_MAX_KEYS,
    N_MAX_MEMORY_BYTES,
    N_MAX_VALUE_BYTES,
    N_MISSES,
    N_MODIFIED,
    N_ORIGIN,
    N_PAGE_LISTS,
    N_POLICY,
    N_PREFETCH_OBSERVER,
    N_PREFETCH_USED,
    N_PREFETCH_WASTED,
    N_READ_THROUGH,
    N_REF,
    N_RELEASE,
    N_SETS,
    N_TABLE,
    N_TYPED_KEYS,
    N_USED_BYTES,
    N_COUNT
};
static const char *const NAME_TEXT[N_COUNT] = {
    "_access_hook",
    "_hook_ring",
    "_note_encoding",
    "_view",
    "acquire",
    "chunk_bytes",
    "chunk_sizes",
    "clock",
    "encodings",
    "hits",
    "largest_value_bytes",
    "live_keys",
    "max_keys",
    "max_memory_bytes",
    "max_value_bytes",
    "misses",
    "modified",
    "origin",
    "page_lists",
    "policy",
    "prefetch_observer",
    "prefetch_used",
    "prefetch_wasted",
    "read_through",
    "ref",
    "release",
    "sets",
    "table",
    "typed_keys",
    "used_bytes",
};
static PyObject *names[N_COUNT];


static PyObject *get_attr(PyObject *obj, int name)
{
    return PyObject_GetAttr(obj, names[name]);
}

/* obj.name += delta (Python ints). */
static int add_attr(PyObject *obj, int name, long long delta)
{
    if (delta == 0)
        return 0;
    PyObject *old = get_attr(obj, name);
    if (old == NULL)
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = d ? PyNumber_Add(old, d) : NULL;
    Py_DECREF(old);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, names[name], sum);
    Py_DECREF(sum);
    return rc;
}

/* Whether attribute `name` of obj is None (-1 on error). */
static int attr_is_none(PyObject *obj, int name)
{
    PyObject *v = get_attr(obj, name);
    if (v == NULL)
        return -1;
    int none = v == Py_None;
    Py_DECREF(v);
    return none;
}

/* What one compiled request reads off the cache each time (objects that a table growth, a
 * flush or a new access hook replace), as new references. */
typedef struct {
    PyObject *table, *view, *policy, *ref, *pages, *sizes, *ring, *typed, *clock;
    /* borrowed from the Entries (Entries.bind) */
    PyObject *hasher, *max_key_bytes, *store, *lock, *stats;
} Bound;

static void bound_release(Bound *b)
{
    PyObject **all[] = {&b->table, &b->view, &b->policy, &b->ref, &b->pages, &b->sizes, &b->ring, &b->typed, &b->clock};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        Py_CLEAR(*all[i]);
}

/* 1 when the cache can serve `writing` (SET) or reading (GET) compiled now, its objects in
 * *b; 0 when the Python path must (nothing is held then); -1 on error. */
static int bind_cache(Entries *self, PyObject *cache, int writing, Bound *b)
{
    memset(b, 0, sizeof *b);
    if (null_hook == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "serving_setup() was not called (import cache_core.cache)");
        return -1;
    }
    if (self->hasher == NULL)
        return 0; /* not bound to its cache: the Python path */
    b->hasher = self->hasher;
    b->max_key_bytes = self->max_key_bytes;
    b->store = self->store;
    b->lock = self->lock;
    b->stats = self->stats;
    /* What the compiled path leaves to Python: a prefetch observer to tell, WATCHed keys to
     * mark, an origin to fill misses, an access hook that takes no ring. */
    int none = attr_is_none(cache, N_PREFETCH_OBSERVER);
    if (none <= 0)
        return none;
    if (writing && (none = attr_is_none(cache, N_MODIFIED)) <= 0)
        return none;
    PyObject *rt = get_attr(cache, N_READ_THROUGH);
    if (rt == NULL)
        return -1;
    int through = PyObject_IsTrue(rt);
    Py_DECREF(rt);
    if (through < 0)
        return -1;
    if (!writing && through) {
        if ((none = attr_is_none(cache, N_ORIGIN)) <= 0)
            return none;
    }
    if ((b->ring = get_attr(cache, N_HOOK_RING)) == NULL)
        return -1;
    if (b->ring == Py_None) {
        PyObject *hook = get_attr(cache, N_ACCESS_HOOK);
        if (hook == NULL)
            goto fail;
        int plain = hook == null_hook;
        Py_DECREF(hook);
        if (!plain)
            goto python;
    }
    if ((b->policy = get_attr(cache, N_POLICY)) == NULL)
        goto fail;
    if ((PyObject *)Py_TYPE(b->policy) != clock_policy)
        goto python; /* other policies record accesses in Python (policy.on_access) */
    if ((b->ref = get_attr(b->policy, N_REF)) == NULL || (b->table = get_attr(cache, N_TABLE)) == NULL ||
        (b->view = get_attr(b->table, N_VIEW)) == NULL)
        goto fail;
    if (b->view == Py_None)
        goto python;
    if ((b->pages = get_attr(b->store, N_PAGE_LISTS)) == NULL || (b->sizes = get_attr(b->store, N_CHUNK_SIZES)) == NULL ||
        (b->typed = get_attr(cache, N_TYPED_KEYS)) == NULL || (b->clock = get_attr(cache, N_CLOCK)) == NULL)
        goto fail;
    return 1;
python:
    bound_release(b);
    return 0;
fail:
    bound_release(b);
    return -1;
}

/* The cache's clock in milliseconds, as Cache.now_ms: int(clock() * 1000); time.monotonic
 * (the default) read directly, with the arithmetic CPython's gives it. */
static PyObject *now_ms(PyObject *clock)
{
#ifdef CLOCK_MONOTONIC
    if (clock == monotonic_clock) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
            double seconds = (double)((int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
            return PyLong_FromLongLong((long long)(seconds * 1000.0));
        }
    }
#endif
    PyObject *t = PyObject_CallNoArgs(clock);
    if (t == NULL)
        return NULL;
    PyObject *k = PyLong_FromLong(1000);
    PyObject *ms = k ? PyNumber_Multiply(t, k) : NULL;
    Py_DECREF(t);
    Py_XDECREF(k);
    if (ms == NULL)
        return NULL;
    PyObject *whole = PyNumber_Long(ms);
    Py_DECREF(ms);
    return whole;
}

/* lone(cache, key, value, null, other, op, result)
 * One client request on database 0 served in one call, with the cache's lock held: value
 * None is GET key (its RESP reply: the bulk string, `null` for a miss, `other` for a key
 * that is not a string), a bytes value is SET key value without options over an existing
 * string key keeping its size class (True). The cache's counters move as Cache.read_replies
 * and Cache.overwrite_strings move them, events go to the access log's ring as there (code
 * `op`, and `result` for a write). None, with nothing changed, where the Python path must
 * serve it (see bind_cache and the reads' own conditions). */
static PyObject *Entries_lone(Entries *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "lone(cache, key, value, null, other, op, result)");
        return NULL;
    }
    PyObject *cache = args[0], *key = args[1], *value = args[2];
    int writing = value != Py_None;
    if (!PyBytes_CheckExact(key) || (writing && !PyBytes_CheckExact(value)))
        Py_RETURN_NONE;
    Bound b;
    int ok = bind_cache(self, cache, writing, &b);
    if (ok <= 0)
        return ok == 0 ? Py_NewRef(Py_None) : NULL;
    PyObject *result = NULL, *got = NULL, *now = NULL, *keys = NULL, *values = NULL, *tmp = NULL;
    PyObject *locked = PyObject_CallMethodNoArgs(b.lock, names[N_ACQUIRE]);
    if (locked == NULL)
        goto out;
    Py_DECREF(locked);
    if ((now = now_ms(b.clock)) == NULL || (keys = PyList_New(1)) == NULL)
        goto unlock;
    PyList_SET_ITEM(keys, 0, Py_NewRef(key));
    if (!writing) {
        PyObject *typed = PyBool_FromLong(PyObject_IsTrue(b.typed) == 1);
        PyObject *argv[14] = {b.hasher, b.view, keys, b.max_key_bytes, now, typed, args[3], args[4], Py_False,
                              b.pages, b.sizes, b.ref, b.ring, args[5]};
        got = Entries_read_reply(self, argv, 14);
        Py_DECREF(typed);
        if (got == NULL || got == Py_None)
            goto unlock;
        /* (reply, hits, prefetch_used, results, hit_eids) */
        long long hits = PyLong_AsLongLong(PyTuple_GET_ITEM(got, 1));
        long long used = PyLong_AsLongLong(PyTuple_GET_ITEM(got, 2));
        if (PyErr_Occurred() || add_attr(b.stats, N_PREFETCH_USED, used) < 0 || add_attr(b.stats, N_HITS, hits) < 0 ||
            add_attr(b.stats, N_MISSES, 1 - hits) < 0)
            goto unlock;
        result = Py_NewRef(PyTuple_GET_ITEM(got, 0));
        goto unlock;
    }
    /* SET: the checks of Cache.overwrite_strings and _overwrite_native first. */
    long long len = PyBytes_GET_SIZE(value);
    if ((tmp = get_attr(cache, N_MAX_VALUE_BYTES)) == NULL)
        goto unlock;
    long long max_value = PyLong_AsLongLong(tmp);
    Py_CLEAR(tmp);
    if (max_value == -1 && PyErr_Occurred())
        goto unlock;
    long long counts[4];
    const int limits[3] = {N_LIVE_KEYS, N_MAX_KEYS, N_MAX_MEMORY_BYTES};
    for (int i = 0; i < 3; i++) {
        if ((tmp = get_attr(cache, limits[i])) == NULL)
            goto unlock;
        counts[i] = PyLong_AsLongLong(tmp);
        Py_CLEAR(tmp);
    }
    if ((tmp = get_attr(b.store, N_CHUNK_BYTES)) == NULL)
        goto unlock;
    counts[3] = PyLong_AsLongLong(tmp);
    Py_CLEAR(tmp);
    if (PyErr_Occurred())
        goto unlock;
    if (len > max_value || counts[0] > counts[1] || counts[3] > counts[2]) {
        result = Py_NewRef(Py_None);
        goto unlock;
    }
    if ((values = PyList_New(1)) == NULL)
        goto unlock;
    PyList_SET_ITEM(values, 0, Py_NewRef(value));
    PyObject *never = PyLong_FromLong(0); /* TTL_NONE: SET without options drops a TTL */
    if (never == NULL)
        goto unlock;
    PyObject *argv[14] = {b.hasher, b.view, keys, values, b.max_key_bytes, now, never, Py_False,
                          b.pages, b.sizes, b.ref, b.ring, args[5], args[6]};
    got = Entries_overwrite(self, argv, 14);
    Py_DECREF(never);
    if (got == NULL || got == Py_None)
        goto unlock;
    /* (used_bytes_delta, prefetch_wasted, lo, eids) */
    long long used = PyLong_AsLongLong(PyTuple_GET_ITEM(got, 0));
    long long wasted = PyLong_AsLongLong(PyTuple_GET_ITEM(got, 1));
    if (PyErr_Occurred() || add_attr(b.store, N_USED_BYTES, used) < 0 || add_attr(b.stats, N_PREFETCH_WASTED, wasted) < 0 ||
        add_attr(b.stats, N_SETS, 1) < 0)
        goto unlock;
    /* An entry with a non-default encoding (APPEND, INCRBYFLOAT) is a plain string again. */
    if ((tmp = get_attr(cache, N_ENCODINGS)) == NULL)
        goto unlock;
    int encoded = PyObject_IsTrue(tmp);
    Py_CLEAR(tmp);
    if (encoded < 0)
        goto unlock;
    if (encoded) {
        const int64_t *eid = (const int64_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(got, 3));
        tmp = Py_BuildValue("([L]O)", (long long)eid[0], Py_None);
        PyObject *done = tmp ? PyObject_CallMethodObjArgs(cache, names[N_NOTE_ENCODING], PyTuple_GET_ITEM(tmp, 0), Py_None, NULL) : NULL;
        Py_CLEAR(tmp);
        if (done == NULL)
            goto unlock;
        Py_DECREF(done);
    }
    if ((tmp = get_attr(cache, N_LARGEST_VALUE_BYTES)) == NULL)
        goto unlock;
    long long largest = PyLong_AsLongLong(tmp);
    Py_CLEAR(tmp);
    if (largest == -1 && PyErr_Occurred())
        goto unlock;
    if (len > largest) {
        PyObject *l = PyLong_FromLongLong(len);
        int rc = l ? PyObject_SetAttr(cache, names[N_LARGEST_VALUE_BYTES], l) : -1;
        Py_XDECREF(l);
        if (rc < 0)
            goto unlock;
    }
    result = Py_NewRef(Py_True);
unlock:
    if (got == Py_None && result == NULL && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    {
        /* Released whatever happened, keeping a pending exception. */
        PyObject *type, *val, *tb;
        PyErr_Fetch(&type, &val, &tb);
        PyObject *released = PyObject_CallMethodNoArgs(b.lock, names[N_RELEASE]);
        if (released == NULL) {
            Py_CLEAR(result);
            Py_XDECREF(type);
            Py_XDECREF(val);
            Py_XDECREF(tb);
        } else {
            Py_DECREF(released);
            PyErr_Restore(type, val, tb);
        }
    }
out:
    Py_XDECREF(got);
    Py_XDECREF(now);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    bound_release(&b);
    return result;
}

/* bind(hasher, max_key_bytes, store, lock, stats): the cache's objects that live as long as
 * these arrays, which lone() uses without looking them up. */
static PyObject *Entries_bind(Entries *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || predis_as_blake2b(args[0]) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "bind(hasher, max_key_bytes, store, lock, stats)");
        return NULL;
    }
    Py_XSETREF(self->hasher, Py_NewRef(args[0]));
    Py_XSETREF(self->max_key_bytes, Py_NewRef(args[1]));
    Py_XSETREF(self->store, Py_NewRef(args[2]));
    Py_XSETREF(self->lock, Py_NewRef(args[3]));
    Py_XSETREF(self->stats, Py_NewRef(args[4]));
    Py_RETURN_NONE;
}

/* serving_setup(null_access_hook, clock_policy_class, monotonic): what lone() compares with. */
static PyObject *serving_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "serving_setup(null_access_hook, clock_policy_class, monotonic)");
        return NULL;
    }
    Py_XSETREF(monotonic_clock, Py_NewRef(args[2]));
    for (int i = 0; i < N_COUNT; i++) {
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(NAME_TEXT[i])) == NULL)
            return NULL;
    }
    Py_XSETREF(null_hook, Py_NewRef(args[0]));
    Py_XSETREF(clock_policy, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* write_values(pages, sizes, handles, values): copy each bytes value into the chunk its
 * handle names (the value store's batch put, after the chunks were allocated). Every
 * handle and length is checked before any byte is written. */
static PyObject *write_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "write_values(pages, sizes, handles, values)");
        return NULL;
    }
    PyObject *values = args[3];
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a list of bytes");
        return NULL;
    }
    Slabs slabs;
    if (slabs_open(&slabs, args[0], args[1]) < 0)
        return NULL;
    Py_buffer hb;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[2], &hb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&slabs.sizes_buf);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    const int64_t *handles = (const int64_t *)hb.buf;
    if (hb.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "one int64 handle per value");
        goto done;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *value = PyList_GET_ITEM(values, j);
        int64_t cid = handles[j] >> (HANDLE_CHUNK_BITS + HANDLE_PAGE_BITS);
        if (!PyBytes_Check(value) || cid < 0 || cid >= slabs.classes || PyBytes_GET_SIZE(value) > slabs.sizes[cid]) {
            PyErr_SetString(PyExc_ValueError, "write_values: a value that is not bytes or does not fit its chunk");
            goto done;
        }
    }
    PyObject *open_page = NULL;
    Py_buffer page;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *value = PyList_GET_ITEM(values, j);
        Py_ssize_t len = PyBytes_GET_SIZE(value);
        if (!len)
            continue;
        int64_t h = handles[j];
        int64_t cid = h >> (HANDLE_CHUNK_BITS + HANDLE_PAGE_BITS);
        int64_t page_no = (h >> HANDLE_CHUNK_BITS) & HANDLE_MASK;
        int64_t size = slabs.sizes[cid];
        PyObject *pages = PyList_GET_ITEM(slabs.pages, cid);
        if (!PyList_Check(pages) || page_no >= PyList_GET_SIZE(pages)) {
            PyErr_SetString(PyExc_ValueError, "a value handle names no page");
            goto close;
        }
        PyObject *target = PyList_GET_ITEM(pages, page_no);
        if (target != open_page) { /* consecutive values mostly share a page: open it once */
            if (open_page != NULL)
                PyBuffer_Release(&page);
            open_page = NULL;
            if (PyObject_GetBuffer(target, &page, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
                goto close;
            open_page = target;
        }
        int64_t offset = (h & HANDLE_MASK) * size;
        if (offset + size > page.len) {
            PyErr_SetString(PyExc_ValueError, "a value handle points past its page");
            goto close;
        }
        memcpy((uint8_t *)page.buf + offset, PyBytes_AS_STRING(value), (size_t)len);
    }
    result = Py_NewRef(Py_None);
close:
    if (open_page != NULL)
        PyBuffer_Release(&page);
done:
    PyBuffer_Release(&hb);
    PyBuffer_Release(&slabs.sizes_buf);
    return result;
}

/* encode_bulks(values, null, other, header) -> bytes: the RESP encoding of a list of
 * values: each bytes as a bulk string ($len CRLF data CRLF), None as `null`, anything else
 * (the cache's WRONG_TYPE marker) as `other`; with `header`, the array header *n CRLF
 * first (MGET's reply), else the replies one after another (a run of GETs). */
static PyObject *encode_bulks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_bulks(values, null, other, header)");
        return NULL;
    }
    PyObject *values = args[0], *null = args[1], *other = args[2];
    if (!PyList_Check(values) || !PyBytes_Check(null) || !PyBytes_Check(other)) {
        PyErr_SetString(PyExc_TypeError, "encode_bulks: a list of values and two bytes replies");
        return NULL;
    }
    int header = PyObject_IsTrue(args[3]);
    if (header < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    Py_ssize_t total = header ? 3 + digits(n) : 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *v = PyList_GET_ITEM(values, j);
        Py_ssize_t len;
        if (PyBytes_Check(v))
            len = 5 + digits(PyBytes_GET_SIZE(v)) + PyBytes_GET_SIZE(v);
        else
            len = PyBytes_GET_SIZE(v == Py_None ? null : other);
        if (len > PY_SSIZE_T_MAX - total)
            return PyErr_NoMemory();
        total += len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    if (header) {
        *p++ = '*';
        p = put_number(p, n);
        *p++ = '\r';
        *p++ = '\n';
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *v = PyList_GET_ITEM(values, j);
        if (PyBytes_Check(v)) {
            Py_ssize_t len = PyBytes_GET_SIZE(v);
            *p++ = '$';
            p = put_number(p, len);
            *p++ = '\r';
            *p++ = '\n';
            memcpy(p, PyBytes_AS_STRING(v), (size_t)len);
            p += len;
            *p++ = '\r';
            *p++ = '\n';
        } else {
            PyObject *reply = v == Py_None ? null : other;
            memcpy(p, PyBytes_AS_STRING(reply), (size_t)PyBytes_GET_SIZE(reply));
            p += PyBytes_GET_SIZE(reply);
        }
    }
    return out;
}

static PyMethodDef reads_functions[] = {
    {"serving_setup", (PyCFunction)(void (*)(void))serving_setup, METH_FASTCALL,
     "serving_setup(null_access_hook, clock_policy_class, monotonic): what Entries.lone compares with"},
    {"write_values", (PyCFunction)(void (*)(void))write_values, METH_FASTCALL,
     "write_values(pages, sizes, handles, values): copy each value into the chunk its handle names"},
    {"encode_bulks", (PyCFunction)(void (*)(void))encode_bulks, METH_FASTCALL,
     "encode_bulks(values, null, other, header) -> the RESP bulk replies of values (None: null, not bytes: other)"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Entries_methods[] = {
    {"read", (PyCFunction)(void (*)(void))Entries_read, METH_FASTCALL,
     "read(hasher, table, keys, max_key_bytes, now, max_bytes, typed, wrong_type, pages, sizes, ref, ring, op) -> None or "
     "(values, hits, prefetch_used, lo, results, sizes, hit_eids)"},
    {"bind", (PyCFunction)(void (*)(void))Entries_bind, METH_FASTCALL,
     "bind(hasher, max_key_bytes, store, lock, stats): the cache's objects lone() uses"},
    {"lone", (PyCFunction)(void (*)(void))Entries_lone, METH_FASTCALL,
     "lone(cache, key, value, null, other, op, result) -> a lone GET's reply (value None) or True for a SET, served "
     "compiled with the cache's lock held; None where the Python path must serve it"},
    {"read_reply", (PyCFunction)(void (*)(void))Entries_read_reply, METH_FASTCALL,
     "read_reply(hasher, table, keys, max_key_bytes, now, typed, null, other, header, pages, sizes, ref, ring, op) -> None "
     "or (reply, hits, prefetch_used, results, hit_eids)"},
    {"overwrite", (PyCFunction)(void (*)(void))Entries_overwrite, METH_FASTCALL,
     "overwrite(hasher, table, keys, values, max_key_bytes, now, expire, keep_ttl, pages, sizes, ref, ring, op, result) -> None or "
     "(used_bytes_delta, prefetch_wasted, lo, eids)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EntriesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.Entries",
    .tp_doc = "Entries(e_handle, e_len, e_expire, e_atime, e_prefetched, e_type): the cache's batched string reads.",
    .tp_basicsize = sizeof(Entries),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Entries_init,
    .tp_dealloc = (destructor)Entries_dealloc,
    .tp_methods = Entries_methods,
};

int predis_reads_init(PyObject *module)
{
    if (PyType_Ready(&EntriesType) < 0 || PyModule_AddFunctions(module, reads_functions) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Entries", (PyObject *)&EntriesType);
}
