/* SPDX-License-Identifier: Apache-2.0 */
/* The hash table's operations on host memory (cache_core._native.TableView).
 *
 * cache_core/table.py keeps the table in four NumPy arrays (fingerprints, state, handle,
 * claim) and, on NumPy, probes them with vectorised rounds: about twenty NumPy calls per
 * round, a microsecond or more each, so a pipeline of 16 SETs spent most of its time
 * there. A TableView holds the four arrays' buffers and runs the same operations in C,
 * with the same results slot for slot, the same claim words and the same tickets (the
 * NumPy rounds stay as the oracle of tests/unit/test_native_table.py, and the CUDA
 * kernels in kernels/table.cu implement the same rounds):
 *
 * - lookup: linear probing from lo & mask; with `free`, also each key's first slot that
 *   is not FULL (where an absent key may be placed);
 * - place: the claiming rounds of HashTable._place (every pending key looks at one slot
 *   per round; the lowest batch row proposing for a free slot wins it; a loser whose
 *   winner has its fingerprint takes that slot as found);
 * - remove: a batch delete, the first copy of a key reporting the slot;
 * - set_handles: last occurrence of a slot wins;
 * - scalar probe/insert/delete for one key.
 *
 * Table counters (length, tombstones, ticket) stay on the Python side: each call returns
 * what changed. Callers hold the table's lock; batches of BIG_BATCH keys or more run
 * without the GIL. */
#include "native.h"
#include <string.h>

#define EMPTY PREDIS_EMPTY
#define FULL PREDIS_FULL
#define TOMBSTONE PREDIS_TOMBSTONE
#define BIG_BATCH 4096

typedef predis_table TableView;

static const Py_ssize_t VIEW_ITEMSIZE[4] = {8, 1, 8, 8};

static void view_release(TableView *self)
{
    for (int i = 0; i < self->held; i++)
        PyBuffer_Release(&self->buf[i]);
    self->held = 0;
    self->capacity = 0;
}

static int TableView_init(TableView *self, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args) != 4) {
        PyErr_SetString(PyExc_TypeError, "TableView(keys, state, handle, claim)");
        return -1;
    }
    view_release(self);
    Py_ssize_t capacity = -1;
    for (int i = 0; i < 4; i++) {
        Py_buffer *b = &self->buf[i];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, i), b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            view_release(self);
            return -1;
        }
        self->held = i + 1;
        Py_ssize_t n = b->len / VIEW_ITEMSIZE[i];
        if (i == 0)
            n /= 2;
        if (b->len % VIEW_ITEMSIZE[i] || (i == 0 && b->len % 16) || (capacity >= 0 && n != capacity) || n < 1 || (n & (n - 1))) {
            view_release(self);
            PyErr_SetString(PyExc_ValueError,
                            "TableView: keys (capacity, 2) uint64, state uint8, handle int64 and claim int64, "
                            "C-contiguous and writable, capacity a power of two");
            return -1;
        }
        capacity = n;
    }
    self->keys = (uint64_t *)self->buf[0].buf;
    self->state = (uint8_t *)self->buf[1].buf;
    self->handle = (int64_t *)self->buf[2].buf;
    self->claim = (int64_t *)self->buf[3].buf;
    self->capacity = capacity;
    self->mask = (uint64_t)capacity - 1;
    return 0;
}

static void TableView_dealloc(TableView *self)
{
    view_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int view_ready(TableView *self)
{
    if (self->capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "TableView is not initialised");
        return 0;
    }
    return 1;
}

#define probe predis_table_probe

/* A writable, C-contiguous buffer of `count` items of `itemsize` bytes (count < 0: any
 * whole number of items, returned through *count). */
static int get_array(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t *count, int writable, const char *name)
{
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len % itemsize || (*count >= 0 && view->len / itemsize != *count)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes", name, *count, itemsize, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    *count = view->len / itemsize;
    return 0;
}

static int as_u64(PyObject *obj, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* probe(hi, lo) -> (slot or -1, first free slot or -1) */
static PyObject *TableView_probe(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "probe(hi, lo)");
        return NULL;
    }
    if (!view_ready(self) || as_u64(args[0], &hi) < 0 || as_u64(args[1], &lo) < 0)
        return NULL;
    int64_t free;
    int64_t slot = probe(self, hi, lo, &free);
    return Py_BuildValue("(LL)", (long long)slot, (long long)free);
}

/* find(hi, lo) -> handle of the key's slot, or -1 when absent */
static PyObject *TableView_find(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "find(hi, lo)");
        return NULL;
    }
    if (!view_ready(self) || as_u64(args[0], &hi) < 0 || as_u64(args[1], &lo) < 0)
        return NULL;
    int64_t free;
    int64_t slot = probe(self, hi, lo, &free);
    return PyLong_FromLongLong(slot < 0 ? -1 : (long long)self->handle[slot]);
}

/* insert_one(hi, lo, handle, room) -> (slot, outcome): outcome 0 found (handle kept),
 * 1 created in an EMPTY slot, 2 created in a tombstone; (-1, 0) when the key is absent and
 * `room` is false or no slot is free (nothing changed). */
static PyObject *TableView_insert_one(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "insert_one(hi, lo, handle, room)");
        return NULL;
    }
    if (!view_ready(self) || as_u64(args[0], &hi) < 0 || as_u64(args[1], &lo) < 0)
        return NULL;
    long long handle = PyLong_AsLongLong(args[2]);
    if (handle == -1 && PyErr_Occurred())
        return NULL;
    int room = PyObject_IsTrue(args[3]);
    if (room < 0)
        return NULL;
    int64_t free;
    int64_t slot = probe(self, hi, lo, &free);
    if (slot >= 0)
        return Py_BuildValue("(Li)", (long long)slot, 0);
    if (!room || free < 0)
        return Py_BuildValue("(Li)", -1LL, 0);
    int outcome = self->state[free] == TOMBSTONE ? 2 : 1;
    self->keys[2 * free] = hi;
    self->keys[2 * free + 1] = lo;
    self->state[free] = FULL;
    self->handle[free] = handle;
    return Py_BuildValue("(Li)", (long long)free, outcome);
}

/* delete_one(hi, lo) -> the freed slot (now a tombstone) or -1 */
static PyObject *TableView_delete_one(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hi, lo;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "delete_one(hi, lo)");
        return NULL;
    }
    if (!view_ready(self) || as_u64(args[0], &hi) < 0 || as_u64(args[1], &lo) < 0)
        return NULL;
    int64_t free;
    int64_t slot = probe(self, hi, lo, &free);
    if (slot >= 0) {
        self->keys[2 * slot] = 0;
        self->keys[2 * slot + 1] = 0;
        self->handle[slot] = -1;
        self->state[slot] = TOMBSTONE;
    }
    return PyLong_FromLongLong((long long)slot);
}

static void lookup_batch(const TableView *t, const uint64_t *q, Py_ssize_t n, int64_t *out, int64_t *free)
{
    int64_t scratch;
    for (Py_ssize_t j = 0; j < n; j++)
        out[j] = probe(t, q[2 * j], q[2 * j + 1], free ? &free[j] : &scratch);
}

/* lookup(q, out, free=None): q (n, 2) uint64 fingerprints; out[j] the slot or -1; free[j]
 * (when given) the first slot of the chain that is not FULL or -1. */
static PyObject *TableView_lookup(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "lookup(q, out, free=None)");
        return NULL;
    }
    if (!view_ready(self))
        return NULL;
    Py_buffer qb, ob, fb;
    Py_ssize_t n = -1, m;
    int with_free = nargs == 3 && args[2] != Py_None;
    if (get_array(args[0], &qb, 16, &n, 0, "lookup q") < 0)
        return NULL;
    m = n;
    if (get_array(args[1], &ob, 8, &m, 1, "lookup out") < 0) {
        PyBuffer_Release(&qb);
        return NULL;
    }
    if (with_free) {
        m = n;
        if (get_array(args[2], &fb, 8, &m, 1, "lookup free") < 0) {
            PyBuffer_Release(&qb);
            PyBuffer_Release(&ob);
            return NULL;
        }
    }
    const uint64_t *q = (const uint64_t *)qb.buf;
    int64_t *out = (int64_t *)ob.buf;
    int64_t *free = with_free ? (int64_t *)fb.buf : NULL;
    if (n >= BIG_BATCH) {
        Py_BEGIN_ALLOW_THREADS
        lookup_batch(self, q, n, out, free);
        Py_END_ALLOW_THREADS
    } else {
        lookup_batch(self, q, n, out, free);
    }
    PyBuffer_Release(&qb);
    PyBuffer_Release(&ob);
    if (with_free)
        PyBuffer_Release(&fb);
    Py_RETURN_NONE;
}

typedef struct {
    const uint64_t *q;
    int64_t *rows, *pos, *slots;
    uint8_t *created, *prior, *seen, *free_side;
    Py_ssize_t m, n;
    int64_t ticket;
    long long won, reused;
} PlaceJob;

static inline int same_row(const uint64_t *q, int64_t a, int64_t b)
{
    return q[2 * a] == q[2 * b] && q[2 * a + 1] == q[2 * b + 1];
}

/* HashTable._place: claiming rounds until every pending row has its slot. */
static void place_rounds(TableView *t, PlaceJob *job)
{
    const uint64_t *q = job->q;
    int64_t *rows = job->rows, *pos = job->pos;
    Py_ssize_t m = job->m;
    while (m > 0) {
        Py_ssize_t frees = 0;
        /* Every pending key reads its slot's state before this round writes any. */
        for (Py_ssize_t j = 0; j < m; j++) {
            uint8_t seen = t->state[pos[j]];
            job->seen[j] = seen;
            job->free_side[j] = seen != FULL;
            frees += seen != FULL;
        }
        int64_t top = 0;
        if (frees) {
            top = job->ticket + (int64_t)job->n;
            job->ticket = top + 1;
            for (Py_ssize_t j = 0; j < m; j++) {
                if (!job->free_side[j])
                    continue;
                int64_t ticket = top - rows[j];
                if (t->claim[pos[j]] < ticket)
                    t->claim[pos[j]] = ticket;
            }
        }
        Py_ssize_t keep = 0;
        for (Py_ssize_t j = 0; j < m; j++) {
            int64_t row = rows[j], p = pos[j];
            if (!job->free_side[j]) {
                if (t->keys[2 * p] == q[2 * row] && t->keys[2 * p + 1] == q[2 * row + 1]) {
                    job->slots[row] = p;
                    continue;
                }
            } else {
                int64_t winner = top - t->claim[p];
                if (winner == row) {
                    t->keys[2 * p] = q[2 * row];
                    t->keys[2 * p + 1] = q[2 * row + 1];
                    t->state[p] = FULL;
                    job->slots[row] = p;
                    job->created[row] = 1;
                    job->won++;
                    job->reused += job->seen[j] == TOMBSTONE;
                    if (job->prior != NULL)
                        job->prior[row] = job->seen[j];
                    continue;
                }
                if (winner >= 0 && winner < (int64_t)job->n && same_row(q, winner, row)) {
                    job->slots[row] = p;
                    continue;
                }
            }
            rows[keep] = row;
            pos[keep] = (int64_t)(((uint64_t)p + 1) & t->mask);
            keep++;
        }
        m = keep;
    }
}

/* place(q, idx, pos, slots, created, prior, ticket) -> (ticket, created, tombstones reused)
 * Claims slots for the rows idx of the (n, 2) batch q (all absent from the table),
 * starting at pos; writes slots[row], created[row] and, when prior is not None, the state
 * each created slot had. */
static PyObject *TableView_place(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "place(q, idx, pos, slots, created, prior, ticket)");
        return NULL;
    }
    if (!view_ready(self))
        return NULL;
    long long ticket = PyLong_AsLongLong(args[6]);
    if (ticket == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer b[6];
    int held = 0;
    Py_ssize_t n = -1, m = -1, count;
    PyObject *result = NULL;
    PlaceJob job;
    memset(&job, 0, sizeof job);
    int64_t *work = NULL;
    uint8_t *flags = NULL;
    if (get_array(args[0], &b[held], 16, &n, 0, "place q") < 0)
        goto done;
    held++;
    if (get_array(args[1], &b[held], 8, &m, 0, "place idx") < 0)
        goto done;
    held++;
    count = m;
    if (get_array(args[2], &b[held], 8, &count, 0, "place pos") < 0)
        goto done;
    held++;
    count = n;
    if (get_array(args[3], &b[held], 8, &count, 1, "place slots") < 0)
        goto done;
    held++;
    count = n;
    if (get_array(args[4], &b[held], 1, &count, 1, "place created") < 0)
        goto done;
    held++;
    if (args[5] != Py_None) {
        count = n;
        if (get_array(args[5], &b[held], 1, &count, 1, "place prior") < 0)
            goto done;
        held++;
        job.prior = (uint8_t *)b[5].buf;
    }
    const int64_t *idx = (const int64_t *)b[1].buf, *start = (const int64_t *)b[2].buf;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (idx[j] < 0 || idx[j] >= n || start[j] < 0 || start[j] >= self->capacity) {
            PyErr_SetString(PyExc_ValueError, "place: a row or start slot is out of range");
            goto done;
        }
    }
    work = PyMem_Malloc(sizeof(int64_t) * 2 * (size_t)(m ? m : 1));
    flags = PyMem_Malloc(2 * (size_t)(m ? m : 1));
    if (work == NULL || flags == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(work, idx, sizeof(int64_t) * (size_t)m);
    memcpy(work + m, start, sizeof(int64_t) * (size_t)m);
    job.q = (const uint64_t *)b[0].buf;
    job.rows = work;
    job.pos = work + m;
    job.slots = (int64_t *)b[3].buf;
    job.created = (uint8_t *)b[4].buf;
    job.seen = flags;
    job.free_side = flags + m;
    job.m = m;
    job.n = n;
    job.ticket = ticket;
    if (m >= BIG_BATCH) {
        Py_BEGIN_ALLOW_THREADS
        place_rounds(self, &job);
        Py_END_ALLOW_THREADS
    } else {
        place_rounds(self, &job);
    }
    result = Py_BuildValue("(LLL)", (long long)job.ticket, job.won, job.reused);
done:
    PyMem_Free(work);
    PyMem_Free(flags);
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    return result;
}

/* The arguments of remove and set_handles: (first, second, ticket), the first array of n
 * items of `first_itemsize` bytes, the second of n int64 (writable when `second_writable`).
 * Both buffers are open on success (release them); -1 with an exception. */
static int two_arrays_and_ticket(TableView *self, PyObject *const *args, Py_ssize_t nargs, const char *usage,
                                 Py_ssize_t first_itemsize, int second_writable, Py_buffer *first, Py_buffer *second,
                                 Py_ssize_t *n, long long *ticket)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (!view_ready(self))
        return -1;
    *ticket = PyLong_AsLongLong(args[2]);
    if (*ticket == -1 && PyErr_Occurred())
        return -1;
    *n = -1;
    if (get_array(args[0], first, first_itemsize, n, 0, usage) < 0)
        return -1;
    Py_ssize_t m = *n;
    if (get_array(args[1], second, 8, &m, second_writable, usage) < 0) {
        PyBuffer_Release(first);
        return -1;
    }
    return 0;
}

/* remove(q, out, ticket) -> (ticket, removed): deletes the (n, 2) batch q, leaving
 * tombstones; out[j] the freed slot, -1 for absent keys and for later copies of a key
 * (the claim words and the ticket move as in HashTable._delete's _first_claim). */
static PyObject *TableView_remove(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer qb, ob;
    Py_ssize_t n;
    long long ticket;
    if (two_arrays_and_ticket(self, args, nargs, "remove(q, out, ticket)", 16, 1, &qb, &ob, &n, &ticket) < 0)
        return NULL;
    const uint64_t *q = (const uint64_t *)qb.buf;
    int64_t *out = (int64_t *)ob.buf;
    long long removed = 0;
    int64_t scratch;
    Py_ssize_t hits = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        out[j] = probe(self, q[2 * j], q[2 * j + 1], &scratch);
        hits += out[j] >= 0;
    }
    if (hits) {
        int64_t top = (int64_t)ticket + (int64_t)hits;
        ticket = top + 1;
        int64_t rank = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            int64_t s = out[j];
            if (s < 0)
                continue;
            int64_t mine = top - rank++;
            if (self->claim[s] < mine) {
                self->claim[s] = mine;
                self->keys[2 * s] = 0;
                self->keys[2 * s + 1] = 0;
                self->handle[s] = -1;
                self->state[s] = TOMBSTONE;
                removed++;
            } else {
                out[j] = -1;
            }
        }
    }
    PyBuffer_Release(&qb);
    PyBuffer_Release(&ob);
    return Py_BuildValue("(LL)", ticket, removed);
}

/* set_handles(slots, handles, ticket) -> ticket: handles[j] into slots[j], the last
 * occurrence of a slot winning; every slot must be FULL (ValueError, nothing written). */
static PyObject *TableView_set_handles(TableView *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer sb, hb;
    Py_ssize_t n;
    long long ticket;
    if (two_arrays_and_ticket(self, args, nargs, "set_handles(slots, handles, ticket)", 8, 0, &sb, &hb, &n, &ticket) < 0)
        return NULL;
    const int64_t *slots = (const int64_t *)sb.buf, *handles = (const int64_t *)hb.buf;
    PyObject *result = NULL;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (slots[j] < 0 || slots[j] >= self->capacity) {
            PyErr_Format(PyExc_ValueError, "slots must lie in [0, %zd), got values outside it", self->capacity);
            goto done;
        }
        if (self->state[slots[j]] != FULL) {
            PyErr_SetString(PyExc_ValueError, "set_handles: every slot must hold a key (state FULL)");
            goto done;
        }
    }
    if (n) {
        int64_t top = (int64_t)ticket + (int64_t)n;
        for (Py_ssize_t j = 0; j < n; j++) {
            int64_t mine = top - (int64_t)(n - 1 - j);
            if (self->claim[slots[j]] < mine)
                self->claim[slots[j]] = mine;
            self->handle[slots[j]] = handles[j];
        }
        ticket = top + 1;
    }
    result = PyLong_FromLongLong(ticket);
done:
    PyBuffer_Release(&sb);
    PyBuffer_Release(&hb);
    return result;
}

static PyMethodDef TableView_methods[] = {
    {"probe", (PyCFunction)(void (*)(void))TableView_probe, METH_FASTCALL, "probe(hi, lo) -> (slot or -1, first free slot or -1)"},
    {"find", (PyCFunction)(void (*)(void))TableView_find, METH_FASTCALL, "find(hi, lo) -> the key's handle, or -1 when absent"},
    {"insert_one", (PyCFunction)(void (*)(void))TableView_insert_one, METH_FASTCALL,
     "insert_one(hi, lo, handle, room) -> (slot, 0 found | 1 created | 2 created over a tombstone); (-1, 0) when it cannot"},
    {"delete_one", (PyCFunction)(void (*)(void))TableView_delete_one, METH_FASTCALL, "delete_one(hi, lo) -> freed slot or -1"},
    {"lookup", (PyCFunction)(void (*)(void))TableView_lookup, METH_FASTCALL, "lookup(q, out, free=None): slots of a packed batch"},
    {"place", (PyCFunction)(void (*)(void))TableView_place, METH_FASTCALL,
     "place(q, idx, pos, slots, created, prior, ticket) -> (ticket, created, tombstones reused)"},
    {"remove", (PyCFunction)(void (*)(void))TableView_remove, METH_FASTCALL, "remove(q, out, ticket) -> (ticket, removed)"},
    {"set_handles", (PyCFunction)(void (*)(void))TableView_set_handles, METH_FASTCALL, "set_handles(slots, handles, ticket) -> ticket"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.TableView",
    .tp_doc = "TableView(keys, state, handle, claim): the hash table's operations on its host arrays.",
    .tp_basicsize = sizeof(TableView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TableView_init,
    .tp_dealloc = (destructor)TableView_dealloc,
    .tp_methods = TableView_methods,
};

predis_table *predis_as_table(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &TableViewType)) {
        PyErr_SetString(PyExc_TypeError, "expected a cache_core._native.TableView");
        return NULL;
    }
    TableView *view = (TableView *)obj;
    return view_ready(view) ? view : NULL;
}

int predis_table_init(PyObject *module)
{
    if (PyType_Ready(&TableViewType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "TableView", (PyObject *)&TableViewType);
}
