/* SPDX-License-Identifier: Apache-2.0 */
/* The RESP request parser (cache_core._native.RequestParser).
 *
 * The same parser as cache_core/resp/protocol.py's PyRequestParser, which stays as its
 * test oracle: incremental (the state of a half-received command is kept between reads,
 * so a command arriving in many reads is parsed once), bounded (declared lengths over the
 * limits are refused when their header arrives, before anything is buffered for them),
 * arrays of bulk strings as clients send them, inline commands as people type them.
 *
 * Unparsed bytes live in one growable buffer owned by the parser; each argument becomes a
 * bytes object in one copy. An inline command's line is split by the Python function
 * registered with parser_setup (inline commands come from people at a prompt, not from
 * client libraries; there is nothing to gain by splitting them here). */
#include "native.h"
#include <string.h>
#include <structmember.h>

/* Under AddressSanitizer the buffer's unused capacity is poisoned, so a read past the
 * received bytes is reported even though it stays inside the allocation. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (size_t)(n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (size_t)(n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* The longest header line ("*<count>" or "$<length>") read before its CRLF arrives. */
#define MAX_HEADER_BYTES 32
/* A header's digits (sign included) longer than this are invalid (a 64-bit integer). */
#define MAX_HEADER_DIGITS 20
/* The buffer is given back to the allocator when it is empty and larger than this. */
#define KEEP_BUFFER_BYTES (64 * 1024)
/* What one received argument costs beyond its bytes (bytes object header and list slot),
 * for the query-buffer accounting; protocol.ARG_OVERHEAD_BYTES is the same figure. */
#define ARG_OVERHEAD_BYTES 41

static const char MULTIBULK_ERROR[] = "Protocol error: invalid multibulk length";
static const char BULK_ERROR[] = "Protocol error: invalid bulk length";

/* Set once by parser_setup: the exception class of protocol errors and the inline splitter. */
static PyObject *protocol_error_type = NULL;
static PyObject *split_inline_func = NULL;

typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t cap;
    Py_ssize_t len;
    Py_ssize_t pos;
    PyObject *args;          /* list: the multibulk command being received, or NULL */
    Py_ssize_t remaining;    /* its arguments still to come */
    Py_ssize_t need;         /* bytes from pos that complete the bulk being waited for */
    Py_ssize_t partial;      /* memory held by the arguments of the incomplete command */
    Py_ssize_t max_bulk;
    Py_ssize_t max_multibulk;
    Py_ssize_t max_inline;
    int restricted;
    Py_ssize_t restricted_bulk;
    Py_ssize_t restricted_multibulk;
    PyObject *error;         /* the ProtocolError that stopped parsing, or None */
} Parser;

static int set_error(Parser *self, const char *message)
{
    PyObject *exc = PyObject_CallFunction(protocol_error_type, "s", message);
    if (exc == NULL)
        return -1;
    Py_SETREF(self->error, exc);
    return 0;
}

/* The position of the first CRLF in [from, limit), or -1. */
static Py_ssize_t find_crlf(const char *buf, Py_ssize_t from, Py_ssize_t limit)
{
    while (from + 1 < limit) {
        const char *cr = memchr(buf + from, '\r', (size_t)(limit - from - 1));
        if (cr == NULL)
            return -1;
        Py_ssize_t at = cr - buf;
        if (buf[at + 1] == '\n')
            return at;
        from = at + 1;
    }
    return -1;
}

/* The CRLF ending the header line ("*<count>" or "$<length>") that starts at pos: its
 * position, -1 while it may still arrive, -2 when the line is already too long. */
static Py_ssize_t header_end(const char *buf, Py_ssize_t pos, Py_ssize_t size)
{
    Py_ssize_t window = size - pos < MAX_HEADER_BYTES + 2 ? size : pos + MAX_HEADER_BYTES + 2;
    Py_ssize_t end = find_crlf(buf, pos, window);
    if (end < 0 && size - pos > MAX_HEADER_BYTES)
        return -2;
    return end;
}

/* A header integer as redis-server's string2ll reads it: an optional '-', plain decimal
 * digits, no leading zeros, no "-0". Returns 0 and sets *value (saturated to +/-INT64_MAX
 * past 64 bits, which every limit refuses or every caller treats as "empty"), -1 if invalid. */
static int header_int(const char *p, Py_ssize_t n, int64_t *value)
{
    if (n <= 0 || n > MAX_HEADER_DIGITS)
        return -1;
    int negative = p[0] == '-';
    const char *d = p + negative;
    Py_ssize_t digits = n - negative;
    if (digits <= 0 || (d[0] == '0' && (digits > 1 || negative)))
        return -1;
    uint64_t v = 0;
    int saturated = 0;
    for (Py_ssize_t i = 0; i < digits; i++) {
        if (d[i] < '0' || d[i] > '9')
            return -1;
        unsigned digit = (unsigned)(d[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            saturated = 1;
        else
            v = v * 10 + digit;
    }
    if (saturated || v > (uint64_t)INT64_MAX)
        v = (uint64_t)INT64_MAX;
    *value = negative ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* A bulk length: plain digits only (no sign), no leading zeros, at most 19 digits. */
static int bulk_length(const char *p, Py_ssize_t n, uint64_t *value)
{
    if (n <= 0 || n > MAX_HEADER_DIGITS - 1 || (p[0] == '0' && n > 1))
        return -1;
    uint64_t v = 0; /* 19 digits fit in 64 unsigned bits */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *value = v;
    return 0;
}

/* Parse an inline command at self->pos. Returns 1 with *command set (a new reference,
 * possibly an empty list), 0 when its line is not complete, -1 on a Python error; a
 * protocol error sets self->error and returns 0. */
static int parse_inline(Parser *self, PyObject **command)
{
    const char *buf = self->buf;
    Py_ssize_t pos = self->pos;
    const char *nl = memchr(buf + pos, '\n', (size_t)(self->len - pos));
    if (nl == NULL) {
        if (self->len - pos > self->max_inline)
            return set_error(self, "Protocol error: too big inline request");
        return 0;
    }
    Py_ssize_t end = nl - buf;
    if (end - pos > self->max_inline)
        return set_error(self, "Protocol error: too big inline request");
    Py_ssize_t stop = end;
    while (stop > pos && buf[stop - 1] == '\r')
        stop--;
    PyObject *line = PyBytes_FromStringAndSize(buf + pos, stop - pos);
    if (line == NULL)
        return -1;
    PyObject *result = PyObject_CallOneArg(split_inline_func, line);
    Py_DECREF(line);
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(protocol_error_type))
            return -1;
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        if (value == NULL)
            return set_error(self, "Protocol error: invalid inline request");
        Py_SETREF(self->error, value);
        return 0;
    }
    if (!PyList_Check(result)) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "split_inline must return a list");
        return -1;
    }
    self->pos = end + 1;
    *command = result;
    return 1;
}

static void count_partial(Parser *self, Py_ssize_t length) { self->partial += length + ARG_OVERHEAD_BYTES; }

/* Append every complete command to `out` (only the first with `one`). Returns -1 on a
 * Python error, 0 otherwise (a protocol violation sets self->error and stops). */
static int parse(Parser *self, PyObject *out, int one)
{
    const char *buf = self->buf;
    Py_ssize_t size = self->len;
    for (;;) {
        if (self->args == NULL) {
            Py_ssize_t pos = self->pos;
            if (pos >= size)
                return 0;
            if (buf[pos] != '*') {
                PyObject *command = NULL;
                int got = parse_inline(self, &command);
                if (got <= 0)
                    return got;
                Py_ssize_t n = PyList_GET_SIZE(command);
                int rc = n ? PyList_Append(out, command) : 0;
                Py_DECREF(command);
                if (rc < 0)
                    return -1;
                if (n && one)
                    return 0;
                continue;
            }
            Py_ssize_t end = header_end(buf, pos, size);
            if (end < 0)
                return end == -2 ? set_error(self, MULTIBULK_ERROR) : 0;
            int64_t count;
            if (header_int(buf + pos + 1, end - pos - 1, &count) < 0 || count > self->max_multibulk)
                return set_error(self, MULTIBULK_ERROR);
            if (self->restricted && count > self->restricted_multibulk)
                return set_error(self, "Protocol error: unauthenticated multibulk length");
            self->pos = end + 2;
            if (count <= 0)
                continue;
            self->args = PyList_New(0);
            if (self->args == NULL)
                return -1;
            self->remaining = (Py_ssize_t)count;
            self->partial = 0;
        }
        while (self->remaining) {
            Py_ssize_t pos = self->pos;
            if (pos >= size)
                return 0;
            if (buf[pos] != '$') {
                unsigned char c = (unsigned char)buf[pos];
                char message[64];
                if (c > 32 && c < 127)
                    snprintf(message, sizeof message, "Protocol error: expected '$', got '%c'", c);
                else
                    snprintf(message, sizeof message, "Protocol error: expected '$', got '\\x%02x'", c);
                return set_error(self, message);
            }
            Py_ssize_t end = header_end(buf, pos, size);
            if (end < 0)
                return end == -2 ? set_error(self, BULK_ERROR) : 0;
            uint64_t length;
            if (bulk_length(buf + pos + 1, end - pos - 1, &length) < 0 || length > (uint64_t)self->max_bulk)
                return set_error(self, BULK_ERROR);
            if (self->restricted && length > (uint64_t)self->restricted_bulk)
                return set_error(self, "Protocol error: unauthenticated bulk length");
            Py_ssize_t start = end + 2;
            Py_ssize_t stop = start + (Py_ssize_t)length;
            if (size < stop + 2) {
                self->need = stop + 2 - pos;
                return 0;
            }
            self->need = 0;
            if (buf[stop] != '\r' || buf[stop + 1] != '\n')
                return set_error(self, "Protocol error: bulk string not terminated by CRLF");
            PyObject *arg = PyBytes_FromStringAndSize(buf + start, (Py_ssize_t)length);
            if (arg == NULL)
                return -1;
            int rc = PyList_Append(self->args, arg);
            Py_DECREF(arg);
            if (rc < 0)
                return -1;
            count_partial(self, (Py_ssize_t)length);
            self->pos = stop + 2;
            self->remaining--;
        }
        PyObject *command = self->args;
        self->args = NULL;
        self->partial = 0;
        int rc = PyList_Append(out, command);
        Py_DECREF(command);
        if (rc < 0)
            return -1;
        if (one)
            return 0;
    }
}

static int Parser_init(Parser *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_bulk_bytes", "max_multibulk_length", "max_inline_bytes", NULL};
    Py_ssize_t max_bulk, max_multibulk, max_inline;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$nnn", kwlist, &max_bulk, &max_multibulk, &max_inline))
        return -1;
    if (protocol_error_type == NULL || split_inline_func == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "parser_setup() was not called (import cache_core.resp.protocol)");
        return -1;
    }
    if (max_bulk < 0 || max_multibulk < 0 || max_inline < 0 || max_bulk > PY_SSIZE_T_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "parser limits must not be negative");
        return -1;
    }
    self->max_bulk = max_bulk;
    self->max_multibulk = max_multibulk;
    self->max_inline = max_inline;
    Py_XSETREF(self->error, Py_NewRef(Py_None));
    return 0;
}

static PyObject *Parser_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Parser *self = (Parser *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->error = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static void Parser_dealloc(Parser *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->args);
    Py_CLEAR(self->error);
    UNPOISON(self->buf, self->cap);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Parser_traverse(Parser *self, visitproc visit, void *arg)
{
    Py_VISIT(self->args);
    Py_VISIT(self->error);
    return 0;
}

static int Parser_clear(Parser *self)
{
    Py_CLEAR(self->args);
    Py_CLEAR(self->error);
    return 0;
}

static PyObject *Parser_feed(Parser *self, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t unparsed = self->len - self->pos;
    UNPOISON(self->buf, self->cap);
    if (unparsed == 0) {
        self->len = self->pos = 0;
        if (self->cap > KEEP_BUFFER_BYTES && data.len <= KEEP_BUFFER_BYTES) {
            PyMem_Free(self->buf);
            self->buf = NULL;
            self->cap = 0;
        }
    } else if (self->pos > 0 && self->len + data.len > self->cap) {
        memmove(self->buf, self->buf + self->pos, (size_t)unparsed);
        self->len = unparsed;
        self->pos = 0;
    }
    if (self->len + data.len > self->cap) {
        Py_ssize_t cap = self->cap ? self->cap : 1024;
        while (cap < self->len + data.len)
            cap = cap > PY_SSIZE_T_MAX / 2 ? self->len + data.len : cap * 2;
        char *grown = PyMem_Realloc(self->buf, (size_t)cap);
        if (grown == NULL) {
            POISON(self->buf + self->len, self->cap - self->len);
            PyBuffer_Release(&data);
            return PyErr_NoMemory();
        }
        self->buf = grown;
        self->cap = cap;
    }
    memcpy(self->buf + self->len, data.buf, (size_t)data.len);
    self->len += data.len;
    POISON(self->buf + self->len, self->cap - self->len);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Parser_commands(Parser *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"one", NULL};
    int one = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &one))
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    if (self->error != Py_None || (self->need && self->len - self->pos < self->need))
        return out;
    if (parse(self, out, one) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Parser_restrict(Parser *self, PyObject *limits)
{
    if (limits == Py_None) {
        self->restricted = 0;
        Py_RETURN_NONE;
    }
    Py_ssize_t bulk, multibulk;
    if (!PyArg_ParseTuple(limits, "nn", &bulk, &multibulk))
        return NULL;
    if (bulk < 0 || multibulk < 0) {
        PyErr_SetString(PyExc_ValueError, "parser limits must not be negative");
        return NULL;
    }
    self->restricted = 1;
    self->restricted_bulk = bulk;
    self->restricted_multibulk = multibulk;
    Py_RETURN_NONE;
}

static PyObject *Parser_buffered(Parser *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->len - self->pos);
}

static PyObject *Parser_held(Parser *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->len - self->pos + self->partial);
}

static PyObject *Parser_assembling(Parser *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->need > 0 && self->len - self->pos < self->need);
}

static PyObject *Parser_limit(Parser *self, void *closure)
{
    Py_ssize_t which = (Py_ssize_t)(intptr_t)closure;
    return PyLong_FromSsize_t(which == 0 ? self->max_bulk : which == 1 ? self->max_multibulk : self->max_inline);
}

static PyMethodDef Parser_methods[] = {
    {"feed", (PyCFunction)Parser_feed, METH_O, "Append bytes received from the socket."},
    {"commands", (PyCFunction)(void (*)(void))Parser_commands, METH_VARARGS | METH_KEYWORDS,
     "commands(one=False): every complete command received so far (only the first with one). "
     "A protocol violation stops parsing: the commands before it are returned and .error is set."},
    {"restrict", (PyCFunction)Parser_restrict, METH_O,
     "Tighter limits (max bulk bytes, max arguments) for a client not yet authenticated; None: "
     "the configured ones only."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Parser_getset[] = {
    {"buffered", (getter)Parser_buffered, NULL, "Bytes received but not yet parsed into a command.", NULL},
    {"held", (getter)Parser_held, NULL,
     "Memory held for the client: unparsed bytes and the arguments of a command not yet complete.", NULL},
    {"assembling", (getter)Parser_assembling, NULL, "A long bulk string is arriving in pieces.", NULL},
    {"max_bulk_bytes", (getter)Parser_limit, NULL, "The configured longest bulk string.", (void *)0},
    {"max_multibulk_length", (getter)Parser_limit, NULL, "The configured most arguments.", (void *)1},
    {"max_inline_bytes", (getter)Parser_limit, NULL, "The configured longest inline command.", (void *)2},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Parser_members[] = {
    {"error", T_OBJECT, offsetof(Parser, error), 0, "The protocol error that stopped parsing, or None."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ParserType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cache_core._native.RequestParser",
    .tp_doc = "RequestParser(*, max_bulk_bytes, max_multibulk_length, max_inline_bytes): "
              "turns bytes from a socket into commands (lists of bytes).",
    .tp_basicsize = sizeof(Parser),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Parser_new,
    .tp_init = (initproc)Parser_init,
    .tp_dealloc = (destructor)Parser_dealloc,
    .tp_traverse = (traverseproc)Parser_traverse,
    .tp_clear = (inquiry)Parser_clear,
    .tp_methods = Parser_methods,
    .tp_getset = Parser_getset,
    .tp_members = Parser_members,
};

static PyObject *parser_setup(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *error_type, *split_inline;
    if (!PyArg_ParseTuple(args, "OO", &error_type, &split_inline))
        return NULL;
    if (!PyType_Check(error_type) || !PyType_IsSubtype((PyTypeObject *)error_type, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "parser_setup: the first argument must be an exception class");
        return NULL;
    }
    if (!PyCallable_Check(split_inline)) {
        PyErr_SetString(PyExc_TypeError, "parser_setup: the second argument must be callable");
        return NULL;
    }
    Py_XSETREF(protocol_error_type, Py_NewRef(error_type));
    Py_XSETREF(split_inline_func, Py_NewRef(split_inline));
    Py_RETURN_NONE;
}

static PyMethodDef parser_functions[] = {
    {"parser_setup", parser_setup, METH_VARARGS,
     "parser_setup(ProtocolError, split_inline): the exception class of protocol errors and the "
     "splitter of inline commands."},
    {NULL, NULL, 0, NULL},
};

int predis_parser_init(PyObject *module)
{
    if (PyType_Ready(&ParserType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "RequestParser", (PyObject *)&ParserType) < 0)
        return -1;
    return PyModule_AddFunctions(module, parser_functions);
}
