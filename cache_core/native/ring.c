/* SPDX-License-Identifier: Apache-2.0 */
/* The access log ring's state and row writes (cache_core._native.EventColumns).
 *
 * cache_core/access_log.py keeps the ring column by column in six NumPy arrays and copies
 * a large batch in with slice assignments. A single GET or SET reports one event; written
 * field by field through NumPy scalar stores that cost about 3 us, more than the read it
 * records. This type holds the six columns' buffers, the ring's head, its count of events
 * offered and its lock (a context manager for the Python side's batch writes and reads),
 * and logs a few events in one call: clock, lock, rows, head, unlock. */
#include "native.h"
#include <pythread.h>
#include <time.h>
#include <string.h>

#define COLUMNS 6

/* ts_ns int64, fp uint64, op uint8, result uint8, tenant uint16, size uint32 */
static const Py_ssize_t ITEMSIZE[COLUMNS] = {8, 8, 1, 1, 2, 4};

typedef struct {
    PyObject_HEAD
    Py_buffer columns[COLUMNS];
    int held;
    Py_ssize_t capacity;
    unsigned long long head;    /* events ever written: the next event's sequence */
    unsigned long long offered; /* events reported, before sampling */
    PyThread_type_lock lock;
} EventColumns;

static PyTypeObject EventColumnsType;

/* Take the ring's lock; while another thread holds it, wait without the GIL. */
static void lock_ring(EventColumns *self)
{
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static void release(EventColumns *self)
{
    for (int i = 0; i < self->held; i++)
        PyBuffer_Release(&self->columns[i]);
    self->held = 0;
}

static int EventColumns_init(EventColumns *self, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "EventColumns takes the six columns positionally");
        return -1;
    }
    if (PyTuple_GET_SIZE(args) != COLUMNS) {
        PyErr_SetString(PyExc_TypeError, "EventColumns(ts_ns, fp, op, result, tenant, size)");
        return -1;
    }
    release(self);
    if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < COLUMNS; i++) {
        Py_buffer *b = &self->columns[i];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, i), b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            release(self);
            return -1;
        }
        self->held = i + 1;
        Py_ssize_t n = b->itemsize ? b->len / b->itemsize : 0;
        if (b->itemsize != ITEMSIZE[i] || b->ndim != 1 || (i > 0 && n != self->capacity) || n < 1 || (n & (n - 1))) {
            release(self);
            PyErr_SetString(PyExc_ValueError,
                            "EventColumns: six one-dimensional writable columns of one power-of-two length "
                            "(int64, uint64, uint8, uint8, uint16, uint32)");
            return -1;
        }
        self->capacity = n;
    }
    return 0;
}

static void EventColumns_dealloc(EventColumns *self)
{
    release(self);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An unsigned 64-bit value from a Python int or anything with __index__ (NumPy scalars). */
static int as_u64(PyObject *obj, uint64_t *out)
{
    if (PyLong_CheckExact(obj)) {
        *out = PyLong_AsUnsignedLongLong(obj);
        return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
    }
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* A sequence as a list or tuple (an array through its tolist(), 20 times faster than
 * iterating it); a new reference, or NULL with an exception. */
static PyObject *as_fast(PyObject *obj, const char *what)
{
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj))
        return Py_NewRef(obj);
    if (PyObject_HasAttrString(obj, "tolist")) {
        PyObject *list = PyObject_CallMethod(obj, "tolist", NULL);
        if (list == NULL || PyList_Check(list))
            return list;
        Py_DECREF(list);
    }
    return PySequence_Fast(obj, what);
}

/* Converted rows, checked before any is written. */
typedef struct {
    Py_ssize_t n;
    uint64_t *fp;
    uint8_t *result;
    uint32_t *size;
    uint64_t small[3 * 32];
} Rows;

static void rows_free(Rows *rows)
{
    if (rows->fp != NULL && rows->fp != rows->small)
        PyMem_Free(rows->fp);
    rows->fp = NULL;
}

/* Whether a buffer holds one-dimensional integers of `itemsize` bytes (any signedness). */
static int int_buffer(const Py_buffer *b, Py_ssize_t itemsize)
{
    const char *format = b->format ? b->format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    return b->ndim == 1 && b->itemsize == itemsize && format[0] != '\0' && format[1] == '\0' &&
           strchr(itemsize == 1 ? "Bb" : "QqLl", format[0]) != NULL;
}

/* Rows straight from three arrays (the cache's uint64 fingerprints, uint8 results and
 * int64 sizes) without a list in between: 1 when done, 0 when the inputs are not such
 * arrays (the sequence path converts them), -1 on error. */
static int rows_from_arrays(Rows *rows, PyObject *fps_obj, PyObject *results_obj, PyObject *sizes_obj)
{
    if (!PyObject_CheckBuffer(fps_obj) || !PyObject_CheckBuffer(results_obj) || !PyObject_CheckBuffer(sizes_obj))
        return 0;
    Py_buffer b[3];
    PyObject *objs[3] = {fps_obj, results_obj, sizes_obj};
    const Py_ssize_t itemsize[3] = {8, 1, 8};
    int held = 0, rc = 0;
    for (; held < 3; held++) {
        if (PyObject_GetBuffer(objs[held], &b[held], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            PyErr_Clear();
            goto done;
        }
        if (!int_buffer(&b[held], itemsize[held])) {
            held++;
            goto done;
        }
    }
    Py_ssize_t n = b[0].len / 8;
    if (b[1].len != n || b[2].len / 8 != n)
        goto done; /* the sequence path reports the mismatch */
    const int64_t *sizes = (const int64_t *)b[2].buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (sizes[i] < 0)
            goto done; /* the sequence path refuses it */
    if (n <= 32) {
        rows->fp = rows->small;
    } else if ((rows->fp = PyMem_Malloc((size_t)n * 13 + 8)) == NULL) {
        PyErr_NoMemory();
        rc = -1;
        goto done;
    }
    rows->n = n;
    rows->size = (uint32_t *)(rows->fp + n);
    rows->result = (uint8_t *)(rows->size + n);
    memcpy(rows->fp, b[0].buf, (size_t)n * 8);
    memcpy(rows->result, b[1].buf, (size_t)n);
    for (Py_ssize_t i = 0; i < n; i++)
        rows->size[i] = (uint64_t)sizes[i] > UINT32_MAX ? UINT32_MAX : (uint32_t)sizes[i];
    rc = 1;
done:
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    return rc;
}

static int rows_convert(Rows *rows, PyObject *fps_obj, PyObject *results_obj, PyObject *sizes_obj)
{
    rows->fp = NULL;
    int direct = rows_from_arrays(rows, fps_obj, results_obj, sizes_obj);
    if (direct != 0)
        return direct > 0 ? 0 : -1;
    PyObject *fps = as_fast(fps_obj, "fps must be a sequence");
    PyObject *results = fps ? as_fast(results_obj, "results must be a sequence") : NULL;
    PyObject *sizes = results ? as_fast(sizes_obj, "sizes must be a sequence") : NULL;
    int rc = -1;
    if (sizes == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fps);
    if (PySequence_Fast_GET_SIZE(results) != n || PySequence_Fast_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "fps, results and sizes differ in length");
        goto done;
    }
    rows->n = n;
    /* fp (8 bytes), then size (4) and result (1) per row, in one block */
    if (n <= 32) {
        rows->fp = rows->small;
    } else if ((rows->fp = PyMem_Malloc((size_t)n * 13 + 8)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    rows->size = (uint32_t *)(rows->fp + n);
    rows->result = (uint8_t *)(rows->size + n);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t fp, result, size;
        if (as_u64(PySequence_Fast_GET_ITEM(fps, i), &fp) < 0 || as_u64(PySequence_Fast_GET_ITEM(results, i), &result) < 0 ||
            as_u64(PySequence_Fast_GET_ITEM(sizes, i), &size) < 0)
            goto done;
        if (result > UINT8_MAX) {
            PyErr_SetString(PyExc_OverflowError, "a result must fit in 8 bits");
            goto done;
        }
        rows->fp[i] = fp;
        rows->result[i] = (uint8_t)result;
        rows->size[i] = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    }
    rc = 0;
done:
    if (rc < 0)
        rows_free(rows);
    Py_XDECREF(fps);
    Py_XDECREF(results);
    Py_XDECREF(sizes);
    return rc;
}

/* Events ahead of the head whose slots a write prefetches. */
#define RING_PREFETCH_AHEAD 64

/* The ring's six columns, typed, and the mask of its sequence numbers. */
typedef struct {
    int64_t *ts;
    uint64_t *fp;
    uint8_t *op, *result;
    uint16_t *tenant;
    uint32_t *size;
    uint64_t mask;
} Columns;

static Columns columns_of(EventColumns *self)
{
    Columns c = {self->columns[0].buf, self->columns[1].buf, self->columns[2].buf, self->columns[3].buf,
                 self->columns[4].buf, self->columns[5].buf, (uint64_t)self->capacity - 1};
    return c;
}

/* Fetch for writing the slots a little ahead of `next`, the next event's sequence number:
 * events mostly come a few at a time (a GET each), too few for the hardware prefetcher to
 * see a stream, and each of the six columns would otherwise cost its own cache miss on the
 * request path. */
static void prefetch_ahead(EventColumns *self, uint64_t next)
{
    Columns c = columns_of(self);
    uint64_t ahead = (next + RING_PREFETCH_AHEAD) & c.mask;
    __builtin_prefetch(c.ts + ahead, 1, 3);
    __builtin_prefetch(c.fp + ahead, 1, 3);
    __builtin_prefetch(c.op + ahead, 1, 3);
    __builtin_prefetch(c.result + ahead, 1, 3);
    __builtin_prefetch(c.tenant + ahead, 1, 3);
    __builtin_prefetch(c.size + ahead, 1, 3);
}

/* A run of events to write: the caller's fingerprints and results, and sizes either as
 * 32-bit values or as 64-bit ones to clamp. */
typedef struct {
    const uint64_t *fp;
    const uint8_t *result;
    const uint32_t *size32;
    const int64_t *size64;
    int64_t ts;
    uint8_t op;
    uint16_t tenant;
} Span;

static inline uint32_t clamp_size(int64_t size)
{
    return size < 0 ? 0 : (uint64_t)size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
}

/* Events [from, from + n) of `span` into slots [at, at + n), which do not wrap: column by
 * column, each a plain fill or copy the compiler vectorises. */
static void write_run(const Columns *c, uint64_t at, const Span *span, Py_ssize_t from, Py_ssize_t n)
{
    if (n <= 0)
        return;
    int64_t *restrict ts = c->ts + at;
    uint64_t *restrict fp = c->fp + at;
    uint32_t *restrict size = c->size + at;
    const uint64_t *restrict fp_in = span->fp + from;
    for (Py_ssize_t i = 0; i < n; i++)
        ts[i] = span->ts;
    memcpy(fp, fp_in, (size_t)n * sizeof *fp);
    memset(c->op + at, span->op, (size_t)n);
    memcpy(c->result + at, span->result + from, (size_t)n);
    uint16_t *restrict tenant = c->tenant + at;
    for (Py_ssize_t i = 0; i < n; i++)
        tenant[i] = span->tenant;
    if (span->size32 != NULL) {
        memcpy(size, span->size32 + from, (size_t)n * sizeof *size);
    } else {
        const int64_t *restrict size_in = span->size64 + from;
        for (Py_ssize_t i = 0; i < n; i++)
            size[i] = clamp_size(size_in[i]);
    }
}

/* `n` events of `span` at sequence numbers head, head+1, ...: at most two runs. Of more
 * events than the ring holds only the newest are written (the older ones would be
 * overwritten within the same call). */
static void span_write(EventColumns *self, uint64_t head, const Span *span, Py_ssize_t n)
{
    Columns c = columns_of(self);
    Py_ssize_t from = n > self->capacity ? n - self->capacity : 0;
    uint64_t at = (head + (uint64_t)from) & c.mask;
    Py_ssize_t first = (Py_ssize_t)((uint64_t)self->capacity - at);
    if (first > n - from)
        first = n - from;
    write_run(&c, at, span, from, first);
    if (from + first < n)
        write_run(&c, 0, span, from + first, n - from - first);
    prefetch_ahead(self, head + (uint64_t)n);
}

/* Cache lines, in bytes, the unit the prefetches below step by. */
#define RING_LINE 64

void predis_ring_prefetch(PyObject *ring, Py_ssize_t from, Py_ssize_t n)
{
    if (n < 1 || !PyObject_TypeCheck(ring, &EventColumnsType) || ((EventColumns *)ring)->held != COLUMNS)
        return;
    EventColumns *self = (EventColumns *)ring;
    Columns c = columns_of(self);
    /* Read without the lock: another writer may move the head meanwhile, which costs
     * these hints their use, never a wrong event. */
    uint64_t head = __atomic_load_n(&self->head, __ATOMIC_RELAXED);
    uint64_t first = (head + (uint64_t)from) & c.mask, last = (head + (uint64_t)(from + n - 1)) & c.mask;
    const void *ends[COLUMNS][2] = {
        {c.ts + first, c.ts + last},         {c.fp + first, c.fp + last},
        {c.op + first, c.op + last},         {c.result + first, c.result + last},
        {c.tenant + first, c.tenant + last}, {c.size + first, c.size + last},
    };
    for (int i = 0; i < COLUMNS; i++) {
        uintptr_t line = (uintptr_t)ends[i][0] & ~(uintptr_t)(RING_LINE - 1), end = (uintptr_t)ends[i][1] & ~(uintptr_t)(RING_LINE - 1);
        if (end < line) { /* the run wraps: its two ends */
            __builtin_prefetch((const void *)line, 1, 3);
            line = end;
        }
        for (; line <= end; line += RING_LINE)
            __builtin_prefetch((const void *)line, 1, 3);
    }
}

static void rows_write(EventColumns *self, const Rows *rows, uint64_t head, int64_t ts, uint8_t op, uint16_t tenant)
{
    Span span = {rows->fp, rows->result, rows->size, NULL, ts, op, tenant};
    span_write(self, head, &span, rows->n);
}

/* rows(head, ts_ns, op, fps, results, sizes, tenant): write len(fps) events at sequence
 * numbers head, head+1, ... (modulo the capacity); sizes are clipped to 32 bits. The
 * caller holds the ring's lock and advances its head. */
static PyObject *EventColumns_rows(EventColumns *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "rows(head, ts_ns, op, fps, results, sizes, tenant)");
        return NULL;
    }
    if (self->held != COLUMNS) {
        PyErr_SetString(PyExc_RuntimeError, "EventColumns was not initialised");
        return NULL;
    }
    uint64_t head, op, tenant, ts;
    if (as_u64(args[0], &head) < 0 || as_u64(args[2], &op) < 0 || as_u64(args[6], &tenant) < 0)
        return NULL;
    long long ts_signed = PyLong_AsLongLong(args[1]);
    if (ts_signed == -1 && PyErr_Occurred())
        return NULL;
    ts = (uint64_t)ts_signed;
    if (op > UINT8_MAX || tenant > UINT16_MAX) {
        PyErr_SetString(PyExc_OverflowError, "op must fit in 8 bits and tenant in 16");
        return NULL;
    }
    Rows rows;
    if (rows_convert(&rows, args[3], args[4], args[5]) < 0)
        return NULL;
    rows_write(self, &rows, head, (int64_t)ts, (uint8_t)op, (uint16_t)tenant);
    rows_free(&rows);
    Py_RETURN_NONE;
}

/* log(op, fps, results, sizes): the whole append of a few events under the ring's lock,
 * stamped with the realtime clock; returns how many were logged. */
static PyObject *EventColumns_log(EventColumns *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "log(op, fps, results, sizes)");
        return NULL;
    }
    if (self->held != COLUMNS) {
        PyErr_SetString(PyExc_RuntimeError, "EventColumns was not initialised");
        return NULL;
    }
    uint64_t op;
    if (as_u64(args[0], &op) < 0)
        return NULL;
    if (op > UINT8_MAX) {
        PyErr_SetString(PyExc_OverflowError, "op must fit in 8 bits");
        return NULL;
    }
    Rows rows;
    if (rows_convert(&rows, args[1], args[2], args[3]) < 0)
        return NULL;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ts = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
    Py_ssize_t n = rows.n;
    /* Only the newest `capacity` events can be held: the others are overwritten at once. */
    Py_ssize_t skip = n > self->capacity ? n - self->capacity : 0;
    Rows newest = rows;
    newest.fp += skip;
    newest.size += skip;
    newest.result += skip;
    newest.n = n - skip;
    lock_ring(self);
    self->head += (unsigned long long)skip;
    rows_write(self, &newest, self->head, ts, (uint8_t)op, 0);
    self->head += (unsigned long long)newest.n;
    self->offered += (unsigned long long)n;
    PyThread_release_lock(self->lock);
    rows_free(&rows);
    return PyLong_FromSsize_t(n);
}

static PyTypeObject EventColumnsType;

int predis_ring_log(PyObject *ring, uint8_t op, const uint64_t *fps, const uint8_t *results, const int64_t *sizes,
                    Py_ssize_t n)
{
    if (!PyObject_TypeCheck(ring, &EventColumnsType) || ((EventColumns *)ring)->held != COLUMNS) {
        PyErr_SetString(PyExc_TypeError, "expected an initialised cache_core._native.EventColumns");
        return -1;
    }
    EventColumns *self = (EventColumns *)ring;
    Py_ssize_t skip = n > self->capacity ? n - self->capacity : 0; /* only the newest fit */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ts = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
    lock_ring(self);
    self->head += (unsigned long long)skip;
    uint64_t head = self->head;
    /* Straight from the caller's arrays into the columns (nothing to check: they are C
     * arrays of the right types), sizes clamped to 32 bits. */
    Span span = {fps + skip, results + skip, NULL, sizes + skip, ts, op, 0};
    span_write(self, head, &span, n - skip);
    self->head += (unsigned long long)(n - skip);
    self->offered += (unsigned long long)n;
    PyThread_release_lock(self->lock);
    return 0;
}

static PyObject *EventColumns_enter(EventColumns *self, PyObject *unused)
{
    (void)unused;
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "EventColumns was not initialised");
        return NULL;
    }
    lock_ring(self);
    return Py_NewRef(self);
}

static PyObject *EventColumns_exit(EventColumns *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    PyThread_release_lock(self->lock);
    Py_RETURN_FALSE;
}

static PyObject *get_counter(EventColumns *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(closure ? self->offered : self->head);
}

static int set_counter(EventColumns *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a ring counter");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (closure)
        self->offered = v;
    else
        self->head = v;
    return 0;
}

static PyGetSetDef EventColumns_getset[] = {
    {"head", (getter)get_counter, (setter)set_counter, "Events ever written (the next event's sequence).", NULL},
    {"offered", (getter)get_counter, (setter)set_counter, "Events reported, before sampling.", (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef EventColumns_methods[] = {
    {"rows", (PyCFunction)(void (*)(void))EventColumns_rows, METH_FASTCALL,
     "rows(head, ts_ns, op, fps, results, sizes, tenant): write one event per fingerprint at "
     "sequence numbers head, head+1, ... (modulo the capacity); sizes clipped to 32 bits. "
     "Every value is converted before any row is written; the caller holds the lock."},
    {"log", (PyCFunction)(void (*)(void))EventColumns_log, METH_FASTCALL,
     "log(op, fps, results, sizes): append these events (tenant 0) stamped with the realtime "
     "clock, under the ring's lock; returns how many."},
    {"__enter__", (PyCFunction)EventColumns_enter, METH_NOARGS, "Take the ring's lock."},
    {"__exit__", (PyCFunction)(void (*)(void))EventColumns_exit, METH_FASTCALL, "Release the ring's lock."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EventColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.EventColumns",
    .tp_doc = "EventColumns(ts_ns, fp, op, result, tenant, size): row writes into the access "
              "log's six column arrays (int64, uint64, uint8, uint8, uint16, uint32, one "
              "power-of-two length).",
    .tp_basicsize = sizeof(EventColumns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)EventColumns_init,
    .tp_dealloc = (destructor)EventColumns_dealloc,
    .tp_methods = EventColumns_methods,
    .tp_getset = EventColumns_getset,
};

int predis_ring_init(PyObject *module)
{
    if (PyType_Ready(&EventColumnsType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "EventColumns", (PyObject *)&EventColumnsType);
}
