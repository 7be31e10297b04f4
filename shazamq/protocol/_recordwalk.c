/* The record walk of produce validation, compiled.
 *
 * check_records(data, count, keys_required=False, first_index=0) does exactly what the
 * pure-Python records._check_records_py does (it stays as the reference and the
 * fallback): walk `count` uncompressed v2 records filling `data` without building them,
 * raise records.CorruptRecordError for garbage with the same messages, and return the
 * records a compacted topic refuses as [(first_index + i, message)].
 *
 * Every byte read goes through a bounds check against the buffer's length: where the
 * Python code would index past the end (IndexError), this raises the same
 * "record i runs past the end of the batch". Positions are int64 and only ever grow by
 * values a 5-byte varint can hold (< 2^35) a bounded number of times per record, so they
 * cannot overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *corrupt_error = NULL; /* records.CorruptRecordError, looked up lazily */
static PyObject *key_message = NULL;   /* "compacted topics require a key on every record" */
static PyObject *zero = NULL;

static PyObject *
get_corrupt_error(void)
{
    if (corrupt_error == NULL) {
        PyObject *mod = PyImport_ImportModule("shazamq.protocol.records");
        if (mod == NULL)
            return NULL;
        corrupt_error = PyObject_GetAttrString(mod, "CorruptRecordError");
        Py_DECREF(mod);
    }
    return corrupt_error;
}

#define CORRUPT(...)                                          \
    do {                                                      \
        if (get_corrupt_error() != NULL)                      \
            PyErr_Format(corrupt_error, __VA_ARGS__);         \
        goto fail;                                            \
    } while (0)

/* One byte at `at`, or the walk ends as Python's IndexError would. */
#define GET(var, at)                                          \
    do {                                                      \
        int64_t at_ = (at);                                   \
        if (at_ < 0 || at_ >= end)                            \
            goto past_end;                                    \
        (var) = d[at_];                                       \
    } while (0)

/* records._read_varint(data, pos, lim, 5): a zigzag varint of at most 5 bytes that must
 * end before `lim` (lim <= len(data)). Returns 0 and sets *value, *pos; -1 with the
 * exception set. */
static int
read_varint(const unsigned char *d, int64_t *pos, int64_t lim, int64_t *value)
{
    int64_t p = *pos;
    if (p >= lim || p < 0)
        goto past;
    unsigned b = d[p];
    if (b < 0x80) {
        *value = (int64_t)(b >> 1) ^ -(int64_t)(b & 1);
        *pos = p + 1;
        return 0;
    }
    uint64_t raw = b & 0x7F;
    int shift = 7;
    p += 1;
    int64_t stop = p + 4 < lim ? p + 4 : lim;
    while (p < stop) {
        b = d[p];
        p += 1;
        raw |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *value = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            *pos = p;
            return 0;
        }
        shift += 7;
    }
    if (p >= lim)
        goto past;
    if (get_corrupt_error() != NULL)
        PyErr_SetString(corrupt_error, "varint longer than 5 bytes");
    return -1;
past:
    if (get_corrupt_error() != NULL)
        PyErr_SetString(corrupt_error, "varint runs past the end of the record data");
    return -1;
}

static int
refuse(PyObject *refused, PyObject *first_index, int64_t i)
{
    PyObject *n = PyLong_FromLongLong(i);
    if (n == NULL)
        return -1;
    PyObject *index = PyNumber_Add(first_index, n);
    Py_DECREF(n);
    if (index == NULL)
        return -1;
    PyObject *item = PyTuple_Pack(2, index, key_message);
    Py_DECREF(index);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(refused, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *
walk(const unsigned char *d, int64_t end, PyObject *count_obj, int keys_required,
     PyObject *first_index)
{
    PyObject *refused = NULL;
    int overflow = 0;
    long long count = PyLong_AsLongLongAndOverflow(count_obj, &overflow);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (overflow > 0 || count > end / 7 + 1) /* a record takes at least 7 bytes */
        CORRUPT("records count %S cannot fit in %lld bytes", count_obj, (long long)end);
    if (overflow < 0)
        count = 0; /* a huge negative count walks no records, as range() would */
    refused = PyList_New(0);
    if (refused == NULL)
        return NULL;

    int64_t pos = 0, i = 0;
    for (i = 0; i < count; i++) {
        unsigned b, b1;
        int64_t length, stop, p, delta, n;

        GET(b, pos); /* record length (zigzag; odd = negative) */
        if (b < 0x80) {
            length = b;
            pos += 1;
        }
        else {
            GET(b1, pos + 1);
            if (b1 < 0x80) {
                length = (int64_t)(b & 0x7F) | ((int64_t)b1 << 7);
                pos += 2;
            }
            else {
                if (read_varint(d, &pos, end, &length) < 0)
                    goto fail;
                length = length >= 0 ? length << 1 : 1;
            }
        }
        if (length & 1)
            CORRUPT("record %lld has a negative length", (long long)i);
        length >>= 1;
        stop = pos + length;
        if (length < 6 || stop > end)
            CORRUPT("record %lld declares an impossible length %lld", (long long)i,
                    (long long)length);

        p = pos + 1; /* past the attributes: the timestamp delta is skipped */
        GET(b, p);
        if (b < 0x80) {
            p += 1;
        }
        else {
            GET(b1, p + 1);
            if (b1 < 0x80) {
                p += 2;
            }
            else {
                int64_t q = p;
                for (;;) {
                    GET(b, p);
                    if (b < 0x80)
                        break;
                    p += 1;
                }
                if (p - q >= 10)
                    CORRUPT("record %lld has a timestamp varint of %lld bytes", (long long)i,
                            (long long)(p - q + 1));
                p += 1;
            }
        }

        GET(b, p); /* offset delta: must be i, zigzag 2i */
        if (b < 0x80) {
            delta = b;
            p += 1;
        }
        else {
            GET(b1, p + 1);
            if (b1 < 0x80) {
                delta = (int64_t)(b & 0x7F) | ((int64_t)b1 << 7);
                p += 2;
            }
            else {
                if (read_varint(d, &p, stop, &delta) < 0)
                    goto fail;
                delta = delta >= 0 ? delta << 1 : -1;
            }
        }
        if (delta != i << 1) {
            /* Python's (delta >> 1) ^ -(delta & 1); the -1 of a negative delta gives 0 */
            int64_t shown = delta < 0 ? 0 : (delta >> 1) ^ -(delta & 1);
            CORRUPT("record %lld has offset delta %lld", (long long)i, (long long)shown);
        }

        GET(b, p); /* key */
        if (b < 0x80) {
            p += 1;
            if (b & 1) {
                if (b != 1)
                    CORRUPT("record %lld has a key length %lld", (long long)i,
                            -(long long)((b + 1) >> 1));
                if (keys_required && refuse(refused, first_index, i) < 0)
                    goto fail;
            }
            else {
                p += b >> 1;
            }
        }
        else {
            if (read_varint(d, &p, stop, &n) < 0)
                goto fail;
            if (n < 0)
                CORRUPT("record %lld has a key length %lld", (long long)i, (long long)n);
            p += n;
        }

        GET(b, p); /* value */
        if (b < 0x80) {
            p += 1;
            if (b & 1) {
                if (b != 1)
                    CORRUPT("record %lld has a value length %lld", (long long)i,
                            -(long long)((b + 1) >> 1));
            }
            else {
                p += b >> 1;
            }
        }
        else {
            if (read_varint(d, &p, stop, &n) < 0)
                goto fail;
            if (n < 0)
                CORRUPT("record %lld has a value length %lld", (long long)i, (long long)n);
            p += n;
        }

        if (p >= stop)
            CORRUPT("record %lld ends before its header count", (long long)i);
        if (d[p] == 0) { /* no headers: the usual case (p < stop <= end) */
            p += 1;
        }
        else {
            int64_t nheaders, h;
            if (read_varint(d, &p, stop, &nheaders) < 0)
                goto fail;
            if (nheaders < 0 || nheaders > stop - p)
                CORRUPT("record %lld declares %lld headers", (long long)i,
                        (long long)nheaders);
            for (h = 0; h < nheaders; h++) {
                if (read_varint(d, &p, stop, &n) < 0)
                    goto fail;
                if (n < 0 || p + n > stop)
                    CORRUPT("a header key of record %lld has length %lld", (long long)i,
                            (long long)n);
                p += n;
                if (read_varint(d, &p, stop, &n) < 0)
                    goto fail;
                if (n < -1 || p + (n > 0 ? n : 0) > stop)
                    CORRUPT("a header value of record %lld has length %lld", (long long)i,
                            (long long)n);
                p += n > 0 ? n : 0;
            }
        }
        if (p != stop)
            CORRUPT("record %lld declares %lld bytes but its fields take %lld", (long long)i,
                    (long long)length, (long long)(p - pos));
        pos = stop;
    }
    if (pos != end)
        CORRUPT("%lld bytes left after the last of %S records", (long long)(end - pos),
                count_obj);
    return refused;

past_end:
    CORRUPT("record %lld runs past the end of the batch", (long long)i);
fail:
    Py_XDECREF(refused);
    return NULL;
}

static PyObject *
check_records(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "count", "keys_required", "first_index", NULL};
    Py_buffer view;
    PyObject *count, *first_index = NULL, *result;
    int keys_required = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*O|pO:check_records", kwlist, &view,
                                     &count, &keys_required, &first_index))
        return NULL;
    if (first_index == NULL)
        first_index = zero;
    result = walk((const unsigned char *)view.buf, (int64_t)view.len, count, keys_required,
                  first_index);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"check_records", (PyCFunction)(void (*)(void))check_records, METH_VARARGS | METH_KEYWORDS,
     "check_records(data, count, keys_required=False, first_index=0)\n--\n\n"
     "The compiled record walk of records.check_records (same checks, errors and result)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_recordwalk", "The record walk of produce validation, in C.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__recordwalk(void)
{
    key_message = PyUnicode_InternFromString("compacted topics require a key on every record");
    if (key_message == NULL)
        return NULL;
    zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    return PyModule_Create(&module);
}
