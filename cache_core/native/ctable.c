/* SPDX-License-Identifier: Apache-2.0 */
/* The host cache's hash table (cache_core._native.CompactTable): fingerprint -> entry ID in
 * eight bytes a slot.
 *
 * HashTable (cache_core/table.py, native/table.c, kernels/table.cu) keeps each key's whole
 * 16-byte fingerprint in its slot, with an 8-byte handle, an 8-byte claim word for the
 * GPU's batched inserts and a state byte: 33 bytes a slot, 69 bytes a key at 1M keys in
 * 2^21 slots, more than half of what a key cost. The cache already keeps every entry's
 * fingerprint (Cache.e_hi, e_lo), so on the host a slot needs only the entry's ID and a
 * tag to skip most wrong entries without reading them:
 *
 *     slot = (uint64)tag << 32 | id      tag: the fingerprint's hi >> 32
 *     id 0: empty, 1: tombstone, eid + 2: the entry eid
 *
 * A slot whose tag matches is confirmed against the entry's fingerprint (e_hi[eid],
 * e_lo[eid]), so the answers are those of a table of whole fingerprints: the caller writes
 * an entry's fingerprint before inserting it and keeps it until it is deleted. Probing is
 * linear from lo & mask over a power-of-two capacity, as in HashTable. Batches of BIG_BATCH
 * keys or more, and a rehash, run without the GIL: callers serialise the calls that change
 * the table with those that read it (the cache's lock, and CompactTable's own in
 * cache_core/table.py). Batch arguments are buffers of the caller's NumPy arrays (cache_core/table.py,
 * CompactTable, checks their types). */
#include "native.h"
#include <string.h>

#define ID_EMPTY PREDIS_ID_EMPTY
#define ID_TOMBSTONE PREDIS_ID_TOMBSTONE
#define ID_BASE PREDIS_ID_BASE
#define BIG_BATCH 4096
/* The most entries a table can name: IDs are 32 bits, two of them reserved. */
#define MAX_ENTRIES ((Py_ssize_t)UINT32_MAX - (Py_ssize_t)ID_BASE)

typedef predis_ctable CompactTable;

static PyTypeObject CompactTableType;

static void ctable_release(CompactTable *self)
{
    for (int i = 0; i < self->held; i++)
        PyBuffer_Release(&self->fp[i]);
    self->held = 0;
    PyMem_RawFree(self->slots);
    self->slots = NULL;
    self->capacity = 0;
    self->entries = 0;
}

static uint64_t *slots_alloc(Py_ssize_t capacity)
{
    /* calloc: a fresh table's pages are mapped as slots are first written. */
    return (uint64_t *)PyMem_RawCalloc((size_t)capacity, sizeof(uint64_t));
}

static int ctable_ready(const CompactTable *self)
{
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_ValueError, "CompactTable is not initialised");
        return 0;
    }
    return 1;
}

/* CompactTable(e_hi, e_lo, capacity): the entries' fingerprint arrays (uint64, one length)
 * and a power-of-two capacity. */
static int CompactTable_init(CompactTable *self, PyObject *args, PyObject *kwds)
{
    PyObject *hi_obj, *lo_obj;
    Py_ssize_t capacity;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || !PyArg_ParseTuple(args, "OOn", &hi_obj, &lo_obj, &capacity)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "CompactTable(e_hi, e_lo, capacity)");
        return -1;
    }
    ctable_release(self);
    if (capacity < 1 || (capacity & (capacity - 1))) {
        PyErr_SetString(PyExc_ValueError, "CompactTable: capacity must be a power of two");
        return -1;
    }
    PyObject *objs[2] = {hi_obj, lo_obj};
    for (int i = 0; i < 2; i++) {
        if (PyObject_GetBuffer(objs[i], &self->fp[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            ctable_release(self);
            return -1;
        }
        self->held = i + 1;
        const char *format = self->fp[i].format;
        if (self->fp[i].itemsize != 8 || self->fp[i].ndim != 1 || format == NULL ||
            (strcmp(format, "Q") != 0 && strcmp(format, "L") != 0 && strcmp(format, "=Q") != 0 &&
             strcmp(format, "<Q") != 0)) {
            ctable_release(self);
            PyErr_SetString(PyExc_ValueError, "CompactTable: e_hi and e_lo must be one-dimensional uint64 arrays");
            return -1;
        }
    }
    Py_ssize_t entries = self->fp[0].len / 8;
    if (self->fp[1].len / 8 != entries || entries > MAX_ENTRIES) {
        ctable_release(self);
        PyErr_SetString(PyExc_ValueError, "CompactTable: e_hi and e_lo must be of one length, below 2**32 - 2");
        return -1;
    }
    if ((self->slots = slots_alloc(capacity)) == NULL) {
        ctable_release(self);
        PyErr_NoMemory();
        return -1;
    }
    self->e_hi = (const uint64_t *)self->fp[0].buf;
    self->e_lo = (const uint64_t *)self->fp[1].buf;
    self->entries = entries;
    self->capacity = capacity;
    self->mask = (uint64_t)capacity - 1;
    self->len = 0;
    self->tombstones = 0;
    return 0;
}

static void CompactTable_dealloc(CompactTable *self)
{
    ctable_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

int64_t predis_ctable_find(const predis_ctable *t, uint64_t hi, uint64_t lo)
{
    int64_t free;
    int64_t slot = predis_ctable_probe(t, hi, lo, &free);
    return slot < 0 ? -1 : (int64_t)((uint32_t)t->slots[slot] - ID_BASE);
}

static inline uint64_t full_slot(uint64_t hi, int64_t eid)
{
    return (hi >> 32) << 32 | (uint64_t)((uint32_t)eid + ID_BASE);
}

/* One key with entry `eid`: 0 when it was there (its slot now names eid), 1 when it took
 * an empty slot, 2 a tombstone; -1 when it is absent and there is no room (`room` false
 * or a chain without a free slot). *slot_out gets its slot. */
static int put(CompactTable *t, uint64_t hi, uint64_t lo, int64_t eid, int room, int64_t *slot_out)
{
    int64_t free;
    int64_t slot = predis_ctable_probe(t, hi, lo, &free);
    if (slot >= 0) {
        t->slots[slot] = full_slot(hi, eid);
        *slot_out = slot;
        return 0;
    }
    if (!room || free < 0) {
        *slot_out = -1;
        return -1;
    }
    int reused = (uint32_t)t->slots[free] == ID_TOMBSTONE;
    t->slots[free] = full_slot(hi, eid);
    t->len++;
    t->tombstones -= reused;
    *slot_out = free;
    return reused ? 2 : 1;
}

static int64_t take_out(CompactTable *t, uint64_t hi, uint64_t lo)
{
    int64_t free;
    int64_t slot = predis_ctable_probe(t, hi, lo, &free);
    if (slot >= 0) {
        t->slots[slot] = ID_TOMBSTONE;
        t->len--;
        t->tombstones++;
    }
    return slot;
}

static int as_u64_arg(PyObject *obj, uint64_t *out)
{
    *out = PyLong_AsUnsignedLongLong(obj);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int eid_arg(const CompactTable *t, PyObject *obj, int64_t *out)
{
    long long eid = PyLong_AsLongLong(obj);
    if (eid == -1 && PyErr_Occurred())
        return -1;
    if (eid < 0 || eid >= t->entries) {
        PyErr_Format(PyExc_ValueError, "entry %lld is outside the entry arrays (%zd entries)", eid, t->entries);
        return -1;
    }
    *out = eid;
    return 0;
}

/* probe(hi, lo) -> (slot or -1, first free slot of the chain or -1) */
static PyObject *CompactTable_probe(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "probe(hi, lo)");
        return NULL;
    }
    if (!ctable_ready(self) || as_u64_arg(args[0], &hi) < 0 || as_u64_arg(args[1], &lo) < 0)
        return NULL;
    int64_t free;
    int64_t slot = predis_ctable_probe(self, hi, lo, &free);
    return Py_BuildValue("(LL)", (long long)slot, (long long)free);
}

/* find(hi, lo) -> the key's entry, or -1 when absent */
static PyObject *CompactTable_find(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "find(hi, lo)");
        return NULL;
    }
    if (!ctable_ready(self) || as_u64_arg(args[0], &hi) < 0 || as_u64_arg(args[1], &lo) < 0)
        return NULL;
    return PyLong_FromLongLong(predis_ctable_find(self, hi, lo));
}

/* handle(slot) -> the entry a slot names, or -1 when it holds no key */
static PyObject *CompactTable_handle(CompactTable *self, PyObject *arg)
{
    Py_ssize_t slot = PyLong_AsSsize_t(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (!ctable_ready(self))
        return NULL;
    if (slot < 0 || slot >= self->capacity) {
        PyErr_Format(PyExc_IndexError, "slot %zd outside the table (%zd slots)", slot, self->capacity);
        return NULL;
    }
    uint32_t id = (uint32_t)self->slots[slot];
    return PyLong_FromLongLong(id >= ID_BASE ? (long long)(id - ID_BASE) : -1);
}

/* insert_one(hi, lo, eid, room) -> (slot, 0 found | 1 created | 2 created over a
 * tombstone); (-1, -1) when it is absent and cannot be placed */
static PyObject *CompactTable_insert_one(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    int64_t eid;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "insert_one(hi, lo, eid, room)");
        return NULL;
    }
    if (!ctable_ready(self) || as_u64_arg(args[0], &hi) < 0 || as_u64_arg(args[1], &lo) < 0 ||
        eid_arg(self, args[2], &eid) < 0)
        return NULL;
    int room = PyObject_IsTrue(args[3]);
    if (room < 0)
        return NULL;
    int64_t slot;
    int outcome = put(self, hi, lo, eid, room, &slot);
    return Py_BuildValue("(Li)", (long long)slot, outcome);
}

/* delete_one(hi, lo) -> freed slot or -1 */
static PyObject *CompactTable_delete_one(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "delete_one(hi, lo)");
        return NULL;
    }
    if (!ctable_ready(self) || as_u64_arg(args[0], &hi) < 0 || as_u64_arg(args[1], &lo) < 0)
        return NULL;
    return PyLong_FromLongLong(take_out(self, hi, lo));
}

/* Let other threads run while a batch of `n` keys works (NULL: the GIL is kept). */
static PyThreadState *unlock(Py_ssize_t n)
{
    return n >= BIG_BATCH ? PyEval_SaveThread() : NULL;
}

static void relock(PyThreadState *save)
{
    if (save != NULL)
        PyEval_RestoreThread(save);
}

/* Buffers of a batch call: n rows each (the Python side made them C-contiguous arrays of
 * the right dtypes). */
typedef struct {
    Py_buffer b[5];
    int held;
} Batch;

static void batch_release(Batch *batch)
{
    for (int i = 0; i < batch->held; i++)
        PyBuffer_Release(&batch->b[i]);
    batch->held = 0;
}

/* Open `count` buffers of the given item sizes and writability, all of `n` items (n from
 * the first); -1 with an exception and nothing held. */
static int batch_open(Batch *batch, PyObject *const *objs, int count, const Py_ssize_t *itemsize, const int *writable,
                      Py_ssize_t *n)
{
    batch->held = 0;
    for (int i = 0; i < count; i++) {
        int flags = PyBUF_C_CONTIGUOUS | (writable[i] ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[i], &batch->b[i], flags) < 0) {
            batch_release(batch);
            return -1;
        }
        batch->held = i + 1;
        Py_ssize_t items = batch->b[i].len / itemsize[i];
        if (i == 0)
            *n = items;
        if (batch->b[i].len % itemsize[i] || items != *n) {
            batch_release(batch);
            PyErr_SetString(PyExc_ValueError, "CompactTable: the batch's arrays differ in length or item size");
            return -1;
        }
    }
    return 0;
}

/* lookup(hi, lo, out): out[j] = slot of key j or -1 */
static PyObject *CompactTable_lookup(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const Py_ssize_t size[3] = {8, 8, 8};
    static const int writable[3] = {0, 0, 1};
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lookup(hi, lo, out)");
        return NULL;
    }
    Batch batch;
    Py_ssize_t n = 0;
    if (!ctable_ready(self) || batch_open(&batch, args, 3, size, writable, &n) < 0)
        return NULL;
    const uint64_t *hi = batch.b[0].buf, *lo = batch.b[1].buf;
    int64_t *out = batch.b[2].buf;
    PyThreadState *save = unlock(n);
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t free;
        out[j] = predis_ctable_probe(self, hi[j], lo[j], &free);
    }
    relock(save);
    batch_release(&batch);
    Py_RETURN_NONE;
}

/* handles(slots, out): out[j] = the entry slot j names, -1 for slot -1 or a slot without
 * a key */
static PyObject *CompactTable_handles(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const Py_ssize_t size[2] = {8, 8};
    static const int writable[2] = {0, 1};
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "handles(slots, out)");
        return NULL;
    }
    Batch batch;
    Py_ssize_t n = 0;
    if (!ctable_ready(self) || batch_open(&batch, args, 2, size, writable, &n) < 0)
        return NULL;
    const int64_t *slots = batch.b[0].buf;
    int64_t *out = batch.b[1].buf;
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t s = slots[j];
        if (s < -1 || s >= self->capacity) {
            batch_release(&batch);
            PyErr_Format(PyExc_IndexError, "slot %lld outside the table (%zd slots)", (long long)s, self->capacity);
            return NULL;
        }
        uint32_t id = s < 0 ? ID_EMPTY : (uint32_t)self->slots[s];
        out[j] = id >= ID_BASE ? (int64_t)(id - ID_BASE) : -1;
    }
    batch_release(&batch);
    Py_RETURN_NONE;
}

/* absent(hi, lo) -> how many rows are absent (a key named twice counts twice) */
static PyObject *CompactTable_absent(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const Py_ssize_t size[2] = {8, 8};
    static const int writable[2] = {0, 0};
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "absent(hi, lo)");
        return NULL;
    }
    Batch batch;
    Py_ssize_t n = 0;
    if (!ctable_ready(self) || batch_open(&batch, args, 2, size, writable, &n) < 0)
        return NULL;
    const uint64_t *hi = batch.b[0].buf, *lo = batch.b[1].buf;
    Py_ssize_t absent = 0;
    PyThreadState *save = unlock(n);
    for (Py_ssize_t j = 0; j < n; j++) {
        int64_t free;
        absent += predis_ctable_probe(self, hi[j], lo[j], &free) < 0;
    }
    relock(save);
    batch_release(&batch);
    return PyLong_FromSsize_t(absent);
}

/* insert(hi, lo, eids, slots, created): row by row, each key made present naming eids[j]
 * (a key named twice ends naming its last row's entry); slots[j] its slot, created[j] 1
 * at the row that placed it. The caller checked that the new keys fit (absent) and wrote
 * every entry's fingerprint first. Returns the rows placed; -1 rows (no free slot in a
 * chain, which the load limit rules out) stop the batch with TableFullError's cue:
 * (rows done, False). */
static PyObject *CompactTable_insert(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const Py_ssize_t size[5] = {8, 8, 8, 8, 1};
    static const int writable[5] = {0, 0, 0, 1, 1};
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "insert(hi, lo, eids, slots, created)");
        return NULL;
    }
    Batch batch;
    Py_ssize_t n = 0;
    if (!ctable_ready(self) || batch_open(&batch, args, 5, size, writable, &n) < 0)
        return NULL;
    const uint64_t *hi = batch.b[0].buf, *lo = batch.b[1].buf;
    const int64_t *eids = batch.b[2].buf;
    int64_t *slots = batch.b[3].buf;
    uint8_t *created = batch.b[4].buf;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (eids[j] < 0 || eids[j] >= self->entries) {
            batch_release(&batch);
            PyErr_Format(PyExc_ValueError, "entry %lld is outside the entry arrays (%zd entries)", (long long)eids[j],
                         self->entries);
            return NULL;
        }
    }
    Py_ssize_t done = 0;
    PyThreadState *save = unlock(n);
    for (; done < n; done++) {
        int outcome = put(self, hi[done], lo[done], eids[done], 1, &slots[done]);
        if (outcome < 0)
            break;
        created[done] = outcome > 0;
    }
    relock(save);
    batch_release(&batch);
    return Py_BuildValue("(nO)", done, done == n ? Py_True : Py_False);
}

/* delete(hi, lo, out): out[j] = the slot row j freed, -1 when absent (a key named twice is
 * freed by its first row) */
static PyObject *CompactTable_delete(CompactTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const Py_ssize_t size[3] = {8, 8, 8};
    static const int writable[3] = {0, 0, 1};
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "delete(hi, lo, out)");
        return NULL;
    }
    Batch batch;
    Py_ssize_t n = 0;
    if (!ctable_ready(self) || batch_open(&batch, args, 3, size, writable, &n) < 0)
        return NULL;
    const uint64_t *hi = batch.b[0].buf, *lo = batch.b[1].buf;
    int64_t *out = batch.b[2].buf;
    PyThreadState *save = unlock(n);
    for (Py_ssize_t j = 0; j < n; j++)
        out[j] = take_out(self, hi[j], lo[j]);
    relock(save);
    batch_release(&batch);
    Py_RETURN_NONE;
}

/* rehash(capacity): the keys into a new array of `capacity` slots (a power of two, with
 * room for them), without tombstones; on MemoryError the old one stays. */
static PyObject *CompactTable_rehash(CompactTable *self, PyObject *arg)
{
    Py_ssize_t capacity = PyLong_AsSsize_t(arg);
    if (capacity == -1 && PyErr_Occurred())
        return NULL;
    if (!ctable_ready(self))
        return NULL;
    if (capacity < 1 || (capacity & (capacity - 1)) || capacity < self->len) {
        PyErr_SetString(PyExc_ValueError, "rehash: capacity must be a power of two that holds the keys");
        return NULL;
    }
    uint64_t *fresh = slots_alloc(capacity);
    if (fresh == NULL)
        return PyErr_NoMemory();
    uint64_t mask = (uint64_t)capacity - 1;
    PyThreadState *save = unlock(self->capacity);
    for (Py_ssize_t s = 0; s < self->capacity; s++) {
        uint64_t slot = self->slots[s];
        uint32_t id = (uint32_t)slot;
        if (id < ID_BASE)
            continue;
        uint64_t pos = self->e_lo[id - ID_BASE] & mask;
        while (fresh[pos] != 0)
            pos = (pos + 1) & mask;
        fresh[pos] = slot;
    }
    relock(save);
    PyMem_RawFree(self->slots);
    self->slots = fresh;
    self->capacity = capacity;
    self->mask = mask;
    self->tombstones = 0;
    Py_RETURN_NONE;
}

/* clear(): no keys, no tombstones, the same capacity (its pages given back). */
static PyObject *CompactTable_clear(CompactTable *self, PyObject *unused)
{
    (void)unused;
    if (!ctable_ready(self))
        return NULL;
    uint64_t *fresh = slots_alloc(self->capacity);
    if (fresh == NULL) {
        memset(self->slots, 0, (size_t)self->capacity * sizeof(uint64_t));
    } else {
        PyMem_RawFree(self->slots);
        self->slots = fresh;
    }
    self->len = 0;
    self->tombstones = 0;
    Py_RETURN_NONE;
}

static PyObject *CompactTable_get_len(CompactTable *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->len);
}

static PyObject *CompactTable_get_capacity(CompactTable *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->capacity);
}

static PyObject *CompactTable_get_tombstones(CompactTable *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->tombstones);
}

static PyObject *CompactTable_get_entries(CompactTable *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->entries);
}

static PyGetSetDef CompactTable_getset[] = {
    {"len", (getter)CompactTable_get_len, NULL, "keys held", NULL},
    {"capacity", (getter)CompactTable_get_capacity, NULL, "slots", NULL},
    {"tombstones", (getter)CompactTable_get_tombstones, NULL, "slots freed since the last rehash", NULL},
    {"entries", (getter)CompactTable_get_entries, NULL, "length of the entry arrays it compares with", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef CompactTable_methods[] = {
    {"probe", (PyCFunction)(void (*)(void))CompactTable_probe, METH_FASTCALL, "probe(hi, lo) -> (slot or -1, first free slot or -1)"},
    {"find", (PyCFunction)(void (*)(void))CompactTable_find, METH_FASTCALL, "find(hi, lo) -> the key's entry, or -1"},
    {"handle", (PyCFunction)CompactTable_handle, METH_O, "handle(slot) -> the entry the slot names, or -1"},
    {"insert_one", (PyCFunction)(void (*)(void))CompactTable_insert_one, METH_FASTCALL,
     "insert_one(hi, lo, eid, room) -> (slot, 0 found | 1 created | 2 over a tombstone); (-1, -1) when it cannot"},
    {"delete_one", (PyCFunction)(void (*)(void))CompactTable_delete_one, METH_FASTCALL, "delete_one(hi, lo) -> freed slot or -1"},
    {"lookup", (PyCFunction)(void (*)(void))CompactTable_lookup, METH_FASTCALL, "lookup(hi, lo, out): slots of a batch"},
    {"handles", (PyCFunction)(void (*)(void))CompactTable_handles, METH_FASTCALL, "handles(slots, out): their entries"},
    {"absent", (PyCFunction)(void (*)(void))CompactTable_absent, METH_FASTCALL, "absent(hi, lo) -> rows absent"},
    {"insert", (PyCFunction)(void (*)(void))CompactTable_insert, METH_FASTCALL,
     "insert(hi, lo, eids, slots, created) -> (rows placed, all placed)"},
    {"delete", (PyCFunction)(void (*)(void))CompactTable_delete, METH_FASTCALL, "delete(hi, lo, out): freed slots"},
    {"rehash", (PyCFunction)CompactTable_rehash, METH_O, "rehash(capacity): rebuild without tombstones"},
    {"clear", (PyCFunction)CompactTable_clear, METH_NOARGS, "clear(): remove every key and tombstone"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CompactTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.CompactTable",
    .tp_doc = "CompactTable(e_hi, e_lo, capacity): fingerprint -> entry ID, eight bytes a slot, "
              "confirmed against the entries' fingerprints.",
    .tp_basicsize = sizeof(CompactTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CompactTable_init,
    .tp_dealloc = (destructor)CompactTable_dealloc,
    .tp_methods = CompactTable_methods,
    .tp_getset = CompactTable_getset,
};

predis_ctable *predis_as_ctable(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &CompactTableType)) {
        PyErr_SetString(PyExc_TypeError, "expected a cache_core._native.CompactTable");
        return NULL;
    }
    CompactTable *table = (CompactTable *)obj;
    return ctable_ready(table) ? table : NULL;
}

int predis_ctable_init(PyObject *module)
{
    if (PyType_Ready(&CompactTableType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "CompactTable", (PyObject *)&CompactTableType);
}
